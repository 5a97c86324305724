package ssh

import (
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

const noLocalForwardRule = `
policy "fwd" {
  resources  = ["bastion"]
  identities = ["dev"]
  rule "fwd" {
    effect = "allow"
    on     = ["forward"]
    reason = "dev may reach the services behind the bastion"
  }
  rule "not-the-bastion" {
    effect = "deny"
    on     = ["forward"]
    when   = "request.forward_host in ['127.0.0.1', 'localhost', '::1']"
    reason = "never the bastion's own ports"
  }
}
`

// TestForwardHostSpelledOtherwise: a forward is decided on its host as
// the caller wrote it, and the host resolves it with getaddrinfo, which
// reads 127.1, 2130706433, 0x7f.0.0.1, ::ffff:127.0.0.1, LOCALHOST and
// localhost. as 127.0.0.1. A rule that names the address must not be
// stepped around by another spelling of it: such spellings are refused.
func TestForwardHostSpelledOtherwise(t *testing.T) {
	e := startEnv(t)
	e.publishWithoutNoForwarding(t, noLocalForwardRule)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveBastionService(ln)
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	c := e.dial(t, "dev")
	for _, host := range []string{"127.0.0.1", "127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "::ffff:127.0.0.1", "LOCALHOST", "localhost.", "0:0:0:0:0:0:0:1"} {
		conn, err := c.Dial("tcp", net.JoinHostPort(host, port))
		if err == nil {
			b, _ := io.ReadAll(conn)
			conn.Close()
			t.Errorf("a forward to %s was relayed: %q", host, b)
			continue
		}
		var oce *gossh.OpenChannelError
		if !errors.As(err, &oce) || oce.Reason != gossh.Prohibited {
			t.Errorf("a forward to %s: %v", host, err)
		}
	}
	// A forward the rules allow, spelled canonically, passes: the service
	// on another loopback address than the one the rule names.
	if _, err := c.Dial("tcp", net.JoinHostPort("127.0.0.2", port)); err == nil || strings.Contains(err.Error(), "administratively prohibited") {
		t.Errorf("a forward to 127.0.0.2 (nothing listens): %v", err)
	}
}

// TestForwardHostOtherSpellingsStillRefused: an IPv6 zone (::1%1) names
// the address the rule names, and the host connects to it; the
// unspecified addresses (0.0.0.0, ::) connect to the host itself; an
// empty destination is no address; a space or a NUL is in no host
// name, and libcs differ on what they make of one. The gateway
// refuses each before deciding, so none reaches the bastion's own service.
func TestForwardHostOtherSpellingsStillRefused(t *testing.T) {
	e := startEnv(t)
	e.publishWithoutNoForwarding(t, noLocalForwardRule)
	c := e.dial(t, "dev")
	for _, network := range []string{"tcp4", "tcp6"} {
		addr := "127.0.0.1:0"
		if network == "tcp6" {
			addr = "[::1]:0"
		}
		ln, err := net.Listen(network, addr)
		if err != nil {
			t.Logf("%s: %v", network, err)
			continue
		}
		defer ln.Close()
		go serveBastionService(ln)
		port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		hosts := []string{"", "0.0.0.0", "127.0.0.1 x", "127.0.0.1\t", "localhost\x00.example.com", "127.0.0.1%lo"}
		if network == "tcp6" {
			hosts = []string{"::1%lo", "::1%1", "::"}
		}
		for _, host := range hosts {
			// Opened by hand: net.JoinHostPort would bracket the host.
			p, _ := strconv.Atoi(port)
			ch, reqs, err := c.OpenChannel("direct-tcpip", gossh.Marshal(&struct {
				DestAddr string
				DestPort uint32
				OrigAddr string
				OrigPort uint32
			}{host, uint32(p), "127.0.0.1", 50000}))
			if err == nil {
				go gossh.DiscardRequests(reqs)
				b, _ := io.ReadAll(ch)
				ch.Close()
				t.Errorf("a forward to %q was relayed: %q", host, b)
				continue
			}
			var oce *gossh.OpenChannelError
			if !errors.As(err, &oce) || oce.Reason != gossh.Prohibited || !strings.Contains(err.Error(), "gatehouse: forward refused") {
				t.Errorf("a forward to %q: %v", host, err)
			}
		}
	}
}

// serveBastionService answers every connection to ln with one line, as a
// service on the bastion itself that forward rules keep callers from.
func serveBastionService(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = io.WriteString(conn, "the bastion's own service\n")
		conn.Close()
	}
}
