package hclconfig

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
)

// baseHCL is a small valid policy set that test inputs build on: a provider,
// an identity, a postgres database and an ssh host.
const baseHCL = `identity_provider "corp" {
  issuer    = "https://id.example.com"
  audiences = ["gatehouse"]
}

identity "svc" {
  provider = "corp"
  subject  = "svc"
}

postgres "orders" {
  address  = "db.internal:5432"
  database = "orders"
  username = "gatehouse"
  password = "env:ORDERS_DB_PASSWORD"
}

ssh_host "bastion" {
  address     = "bastion.internal:22"
  user        = "ops"
  host_key    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOEUTqBqeZQjtMndz1LphtYO5IcPCLaCN3hxN0yK1Sen"
  private_key = "file:/etc/gatehouse/keys/bastion"
}
`

// diagWant is one expected error diagnostic.
type diagWant struct {
	summary string // exact Summary
	code    string // bundle problem code; "" means the diagnostic must not carry a problem
	file    string // Subject.Filename
	// at locates the expected Subject in file: "before|token|after" names
	// the only occurrence of before+token+after in the file; the Subject
	// must start at token and end right after it (an empty token means an
	// empty range). before and after are optional: "before|token" and
	// "token" work too.
	at        string
	noEnd     bool     // do not check Subject.End (multi-line ranges)
	detail    []string // substrings of Detail
	notDetail []string // strings Detail must not contain
}

func hclErr(summary, file, at string, detail ...string) diagWant {
	return diagWant{summary: summary, file: file, at: at, detail: detail}
}

func problemErr(code, summary, file, at string, detail ...string) diagWant {
	return diagWant{summary: summary, code: code, file: file, at: at, detail: detail}
}

// locate returns the position of the token named by at (see diagWant.at)
// in src, and the position just after the token. Columns count characters;
// inputs using it have no multi-character grapheme clusters.
func locate(t testing.TB, src, at string) (start, end hcl.Pos) {
	t.Helper()
	parts := strings.Split(at, "|")
	var before, tok, after string
	switch len(parts) {
	case 1:
		tok = parts[0]
	case 2:
		before, tok = parts[0], parts[1]
	case 3:
		before, tok, after = parts[0], parts[1], parts[2]
	default:
		t.Fatalf("test bug: bad locator %q", at)
	}
	needle := before + tok + after
	if n := strings.Count(src, needle); n != 1 {
		t.Fatalf("test bug: %q occurs %d times in the input, want exactly once", needle, n)
	}
	off := strings.Index(src, needle) + len(before)
	return posAt(src, off), posAt(src, off+len(tok))
}

// posAt computes the position of byte offset off of src.
func posAt(src string, off int) hcl.Pos {
	pos := hcl.Pos{Line: 1, Column: 1, Byte: off}
	lineStart := strings.LastIndexByte(src[:off], '\n') + 1
	pos.Line += strings.Count(src[:off], "\n")
	pos.Column += utf8.RuneCountInString(src[lineStart:off])
	return pos
}

// checkDiags loads files and checks that the error diagnostics are exactly
// want, in order.
func checkDiags(t *testing.T, files map[string]string, want []diagWant) (*Result, hcl.Diagnostics) {
	t.Helper()
	in := map[string][]byte{}
	for name, src := range files {
		in[name] = []byte(src)
	}
	res, diags := LoadFiles(in)
	if res == nil {
		t.Fatal("LoadFiles returned a nil Result")
	}
	var errs hcl.Diagnostics
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			errs = append(errs, d)
		}
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d error diagnostics, want %d:\n%s", len(errs), len(want), dump(diags))
	}
	for i, w := range want {
		d := errs[i]
		checkDiag(t, i, d, files, w)
	}
	if len(want) > 0 && (res.Model != nil || res.Policy != nil) {
		t.Errorf("Model or Policy is set despite errors")
	}
	return res, diags
}

func checkDiag(t *testing.T, i int, d *hcl.Diagnostic, files map[string]string, w diagWant) {
	t.Helper()
	if d.Summary != w.summary {
		t.Errorf("diag %d: Summary = %q, want %q\n%s", i, d.Summary, w.summary, dump(hcl.Diagnostics{d}))
	}
	p, isProblem := ProblemOf(d)
	switch {
	case w.code == "" && isProblem:
		t.Errorf("diag %d: carries problem %q, want a plain HCL diagnostic", i, p.Code)
	case w.code != "" && !isProblem:
		t.Errorf("diag %d: carries no bundle.Problem, want code %q", i, w.code)
	case w.code != "" && p.Code != w.code:
		t.Errorf("diag %d: problem code = %q, want %q", i, p.Code, w.code)
	}
	for _, s := range w.detail {
		if !strings.Contains(d.Detail, s) {
			t.Errorf("diag %d: Detail %q does not contain %q", i, d.Detail, s)
		}
	}
	for _, s := range w.notDetail {
		if strings.Contains(d.Detail, s) {
			t.Errorf("diag %d: Detail %q contains %q", i, d.Detail, s)
		}
	}
	if d.Subject == nil {
		t.Errorf("diag %d: no Subject, want %s at %q", i, w.file, w.at)
		return
	}
	src, ok := files[w.file]
	if !ok {
		t.Fatalf("test bug: no file %q", w.file)
	}
	start, end := locate(t, src, w.at)
	s := d.Subject
	if s.Filename != w.file || s.Start.Line != start.Line || s.Start.Column != start.Column {
		t.Errorf("diag %d (%s): Subject starts at %s:%d:%d, want %s:%d:%d", i, d.Summary,
			s.Filename, s.Start.Line, s.Start.Column, w.file, start.Line, start.Column)
	}
	if s.Start.Byte != start.Byte {
		t.Errorf("diag %d: Subject.Start.Byte = %d, want %d", i, s.Start.Byte, start.Byte)
	}
	if !w.noEnd && (s.End.Line != end.Line || s.End.Column != end.Column) {
		t.Errorf("diag %d (%s): Subject ends at %d:%d, want %d:%d", i, d.Summary,
			s.End.Line, s.End.Column, end.Line, end.Column)
	}
}

func dump(diags hcl.Diagnostics) string {
	var b strings.Builder
	for _, d := range diags {
		code := ""
		if p, ok := ProblemOf(d); ok {
			code = " [" + p.Code + "]"
		}
		subj := "<no subject>"
		if d.Subject != nil {
			subj = fmt.Sprintf("%s:%d:%d-%d:%d", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column, d.Subject.End.Line, d.Subject.End.Column)
		}
		fmt.Fprintf(&b, "  %s: %s%s: %s\n", subj, d.Summary, code, d.Detail)
	}
	return b.String()
}

// withBase returns the files of a case: baseHCL as base.hcl and src as t.hcl.
func withBase(src string) map[string]string {
	return map[string]string{"base.hcl": baseHCL, "t.hcl": src}
}

// kubeCluster is a kubernetes_cluster for cases that need one; it goes
// before a case's own blocks.
const kubeCluster = `kubernetes_cluster "k8s" {
  server = "https://k8s.internal:6443"
  token  = "env:K8S_TOKEN"
}

`
