// Package masking rewrites result values: the mask methods (redact,
// partial, keyed hash, null) and the value detectors (email, card number,
// IBAN, phone, US SSN). It works on a value's text form; the proxy decides
// what to do with binary-format columns.
package masking

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// Redacted is what redact leaves.
const Redacted = "[REDACTED]"

// Apply masks a non-NULL text value. It returns nil for the null method
// (the value becomes SQL NULL). key is the HMAC key of the hash method.
func Apply(method string, value []byte, key []byte) []byte {
	switch method {
	case bundle.MaskNull:
		return nil
	case bundle.MaskPartial:
		return []byte(Partial(string(value)))
	case bundle.MaskHash:
		m := hmac.New(sha256.New, key)
		m.Write(value)
		return []byte("hmac:" + hex.EncodeToString(m.Sum(nil))[:32])
	default:
		// redact, and anything unknown: fail closed.
		return []byte(Redacted)
	}
}

// Partial keeps just enough of a value to recognise it: an email's first
// letter and domain, a number's last four digits, otherwise the first and
// last character.
func Partial(v string) string {
	if at := strings.LastIndexByte(v, '@'); at > 0 && emailRE.MatchString(v) {
		first, _ := utf8.DecodeRuneInString(v)
		return string(first) + "***" + v[at:]
	}
	digits := 0
	for _, r := range v {
		if r >= '0' && r <= '9' {
			digits++
		}
	}
	if digits >= 8 && digits*2 >= utf8.RuneCountInString(v) {
		// A card, account or phone number: keep the last four digits.
		out := []rune(v)
		keep := 4
		for i := len(out) - 1; i >= 0; i-- {
			if out[i] >= '0' && out[i] <= '9' {
				if keep > 0 {
					keep--
					continue
				}
				out[i] = '*'
			}
		}
		return string(out)
	}
	rs := []rune(v)
	switch {
	case len(rs) == 0:
		return ""
	case len(rs) <= 2:
		return strings.Repeat("*", len(rs))
	}
	return string(rs[0]) + strings.Repeat("*", min(len(rs)-2, 8)) + string(rs[len(rs)-1])
}

var (
	emailRE = regexp.MustCompile(`^[^@\s]+@[^@\s]+\.[^@\s]+$`)
	// Detectors look for the datum anywhere in the value.
	emailInRE = regexp.MustCompile(`[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}`)
	cardRE    = regexp.MustCompile(`(?:\d[ -]?){12,18}\d`)
	ibanRE    = regexp.MustCompile(`\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b`)
	phoneRE   = regexp.MustCompile(`(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}[ .-]\d{3,4}[ .-]?\d{3,4}`)
	ssnRE     = regexp.MustCompile(`\b\d{3}-\d{2}-\d{4}\b`)
)

// Detect reports whether a text value contains the kind of datum a
// detector names. Card numbers must pass the Luhn check.
func Detect(detector string, v []byte) bool {
	switch detector {
	case "email":
		return emailInRE.Match(v)
	case "card_number":
		for _, m := range cardRE.FindAll(v, -1) {
			if luhn(m) {
				return true
			}
		}
		return false
	case "iban":
		return ibanRE.Match(v)
	case "phone":
		return phoneRE.Match(v)
	case "us_ssn":
		return ssnRE.Match(v)
	}
	return false
}

func luhn(b []byte) bool {
	sum, n, double := 0, 0, false
	for i := len(b) - 1; i >= 0; i-- {
		c := b[i]
		if c < '0' || c > '9' {
			continue
		}
		d := int(c - '0')
		if double {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
		n++
		double = !double
	}
	return n >= 13 && sum%10 == 0
}
