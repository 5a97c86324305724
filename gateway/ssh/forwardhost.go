package ssh

import (
	"fmt"
	"net/netip"
	"strings"
)

// canonicalHost checks a forward's host (direct-tcpip's destination,
// tcpip-forward's bind address) before it is decided. The policy decides
// on the host as written, and the SSH host resolves it with getaddrinfo,
// which reads many spellings as one address: 127.1, 2130706433,
// 0x7f.0.0.1 and 0177.0.0.1 (inet_aton's forms), ::ffff:127.0.0.1 (IPv4
// mapped into IPv6), 0:0::1, LOCALHOST and localhost. are all a rule's
// 127.0.0.1, ::1 or localhost. A rule that names an address must not be
// stepped around by another spelling of it, so only one spelling of each
// is taken: an IP address as Go prints it (dotted quad, RFC 5952 IPv6),
// and a name in lower case without a trailing dot. The error says which
// spelling to use, when there is one.
func canonicalHost(host string) error {
	if host == "" {
		return nil // a remote forward's "all addresses", as OpenSSH spells it
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			// ::1%1 is ::1 to the host: a rule on ::1 would not see it.
			return fmt.Errorf("the host %q names an IPv6 zone, which the gateway does not take: the address with and without it is one address to the host", host)
		}
		c := a.Unmap().String()
		if c != host {
			return fmt.Errorf("the host %q is not written in canonical form: write %q", host, c)
		}
		return nil
	}
	if i := strings.IndexFunc(host, notHostNameRune); i >= 0 {
		// A space, a NUL, a % or a slash is in no host name, and libcs
		// differ on what they make of one: older inet_aton reads
		// "127.0.0.1 x" as 127.0.0.1, and C stops at a NUL.
		return fmt.Errorf("the host %q holds %q, which no host name or address holds", host, host[i:i+1])
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	labels := strings.Split(name, ".")
	if last := labels[len(labels)-1]; numericLabel(last) {
		// inet_aton reads a name whose last label is a number as an IPv4
		// address in one of its legacy forms (hex, octal, fewer parts).
		return fmt.Errorf("the host %q is an IPv4 address in a legacy form (or no address at all): write it as a dotted quad such as 10.0.0.1", host)
	}
	if name != host {
		return fmt.Errorf("the host %q is not written in canonical form: write %q", host, name)
	}
	return nil
}

// notHostNameRune reports whether r is outside what host names are
// written with: letters, digits, '.', '-' and '_'.
func notHostNameRune(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_')
}

// numericLabel reports whether a label reads as a number to inet_aton:
// decimal, octal (a leading 0) or hexadecimal (0x).
func numericLabel(s string) bool {
	if h, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		for _, r := range h {
			if !strings.ContainsRune("0123456789abcdef", r) {
				return false
			}
		}
		return true
	}
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// destinationHost checks a direct-tcpip destination: canonical as
// canonicalHost says, and an address the host connects to as written. The
// empty host and the unspecified addresses (0.0.0.0, ::) are a remote
// forward's "all addresses", but as a destination the host's kernel
// connects them to the host itself, as 127.0.0.1 or ::1: a rule that names
// the loopback must not be stepped around by them.
func destinationHost(host string) error {
	if host == "" {
		return fmt.Errorf("the destination host is empty")
	}
	if err := canonicalHost(host); err != nil {
		return err
	}
	if a, err := netip.ParseAddr(host); err == nil && a.IsUnspecified() {
		return fmt.Errorf("the host %q is the unspecified address, which connects to the SSH host itself: name the address to reach", host)
	}
	return nil
}
