package hclconfig

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// WriteDiagnostics prints diagnostics the way compilers do: a first line
// "file:line:col: error: summary: detail" that editors and CI annotations can
// parse, then the source line with a caret under the offending token.
func WriteDiagnostics(w io.Writer, files map[string]*hcl.File, diags hcl.Diagnostics) error {
	bw := bufio.NewWriter(w)
	for _, d := range diags {
		sev := "error"
		if d.Severity == hcl.DiagWarning {
			sev = "warning"
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += ": " + d.Detail
		}
		if d.Subject == nil {
			fmt.Fprintf(bw, "%s: %s\n", sev, msg)
			continue
		}
		s := d.Subject
		fmt.Fprintf(bw, "%s:%d:%d: %s: %s\n", s.Filename, s.Start.Line, s.Start.Column, sev, msg)
		// An inline secret's source line is the secret: point at it, but
		// never print it (CI logs keep what they are given).
		if p, ok := ProblemOf(d); ok && p.Code == bundle.CodeInlineSecret {
			continue
		}
		if f := files[s.Filename]; f != nil {
			writeSnippet(bw, f.Bytes, *s)
		}
	}
	return bw.Flush()
}

// maxSnippet bounds how much of a source line a diagnostic prints.
const maxSnippet = 160

func writeSnippet(w io.Writer, src []byte, rng hcl.Range) {
	if rng.Start.Byte < 0 || rng.Start.Byte > len(src) {
		return
	}
	// Columns count characters, not bytes: walk back to the line start.
	lineStart := rng.Start.Byte
	for lineStart > 0 && src[lineStart-1] != '\n' {
		lineStart--
	}
	lineEnd := lineStart
	for lineEnd < len(src) && src[lineEnd] != '\n' {
		lineEnd++
	}
	// Show at most maxSnippet characters of the line, around the error.
	lead := []rune(string(src[lineStart:min(rng.Start.Byte, len(src))]))
	rest := []rune(string(src[min(rng.Start.Byte, len(src)):lineEnd]))
	pre := ""
	if len(lead) > maxSnippet/2 {
		lead, pre = lead[len(lead)-maxSnippet/2:], "..."
	}
	post := ""
	if len(rest) > maxSnippet/2 {
		rest, post = rest[:maxSnippet/2], "..."
	}
	line := pre + string(lead) + string(rest) + post
	prefix := fmt.Sprintf("%5d | ", rng.Start.Line)
	fmt.Fprintf(w, "%s%s\n", prefix, strings.ReplaceAll(line, "\t", " "))
	startCol := utf8.RuneCountInString(pre) + len(lead)
	width := 1
	if rng.End.Line == rng.Start.Line && rng.End.Byte > rng.Start.Byte {
		width = min(utf8.RuneCount(src[rng.Start.Byte:min(rng.End.Byte, len(src))]), len(rest))
	}
	fmt.Fprintf(w, "%s%s%s\n", strings.Repeat(" ", len(prefix)-2)+"| ", strings.Repeat(" ", startCol), strings.Repeat("^", max(width, 1)))
}
