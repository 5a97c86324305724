package approval

import (
	"fmt"
	"strings"
	"unicode"
)

// Printable makes text from a requester (SQL, parameters, comments) safe
// to show an approver: control characters other than newline and tab,
// and the invisible or reordering characters (bidi overrides, zero-width
// spaces) that could make a terminal or chat show something other than
// what runs, are written as \u{XXXX}. A carriage return cannot hide a line.
func Printable(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\n' || r == '\t':
			b.WriteRune(r)
		case r == unicode.ReplacementChar, unicode.IsControl(r), unicode.Is(unicode.Cf, r), r == '\u2028', r == '\u2029':
			fmt.Fprintf(&b, `\u{%04X}`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
