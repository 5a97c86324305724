// Package shellcmd reads an SSH exec command line into the facts a policy
// reasons about, with a real POSIX shell parser (mvdan.cc/sh), so that a
// rule written over a command's words cannot be fooled by quoting, lists,
// pipes, substitutions or redirections the way a regular expression or a
// split on spaces can.
//
// OpenSSH runs an exec command through the login shell of the upstream
// user, so "uptime; rm -rf /" is two commands and "ls $(rm -rf /)" runs
// rm. Analyze therefore gives a command's words only when the whole line
// is one simple command of literal words: anything else has no words that
// say what it does, and a rule must fall back to the exact command string
// (or deny). The login shell is usually bash, so the line is parsed as bash
// (a superset of POSIX sh here), and what bash alone would expand (brace
// expansion, $'...') is not literal either.
package shellcmd

import (
	"fmt"
	"strings"

	"mvdan.cc/sh/v3/syntax"
)

// MaxCommandBytes bounds the command line Analyze reads.
const MaxCommandBytes = 64 << 10

// Facts are what a policy sees of a command line.
type Facts struct {
	// Argv are the words, when Simple.
	Argv []string
	// Simple: the line is one simple command whose words are all literal
	// (quoting is resolved; no variables, globs, substitutions,
	// redirections, assignments, pipes or lists).
	Simple bool
}

// Analyze parses a command line. An error means it does not parse as a
// shell command, which the gateway treats as a reason to deny.
func Analyze(command string) (Facts, error) {
	if len(command) > MaxCommandBytes {
		return Facts{}, fmt.Errorf("the command is larger than %d bytes", MaxCommandBytes)
	}
	if strings.ContainsRune(command, 0) {
		return Facts{}, fmt.Errorf("the command holds a NUL byte")
	}
	if strings.ContainsRune(command, '\r') {
		// The parser folds carriage returns (before a newline, inside
		// quotes) where the upstream's shell keeps them: its words would
		// not be the words run. Such a command is not simple.
		return Facts{}, nil
	}
	f, err := syntax.NewParser(syntax.Variant(syntax.LangBash)).Parse(strings.NewReader(command), "")
	if err != nil {
		return Facts{}, fmt.Errorf("the command does not parse as a shell command: %w", err)
	}
	if len(f.Stmts) != 1 || len(f.Last) > 0 {
		return Facts{}, nil
	}
	st := f.Stmts[0]
	if st.Negated || st.Background || st.Coprocess || len(st.Redirs) > 0 {
		return Facts{}, nil
	}
	call, ok := st.Cmd.(*syntax.CallExpr)
	if !ok || len(call.Assigns) > 0 || len(call.Args) == 0 {
		return Facts{}, nil
	}
	argv := make([]string, 0, len(call.Args))
	for _, w := range call.Args {
		lit, ok := literal(w)
		if !ok {
			return Facts{}, nil
		}
		argv = append(argv, lit)
	}
	return Facts{Argv: argv, Simple: true}, nil
}

// literal is a word's value when it is made of literal parts only: plain
// text, single quotes, and double quotes holding plain text.
func literal(w *syntax.Word) (string, bool) {
	var b strings.Builder
	for _, p := range w.Parts {
		switch x := p.(type) {
		case *syntax.Lit:
			if strings.ContainsAny(x.Value, "*?[{$") || strings.HasPrefix(x.Value, "~") ||
				strings.Contains(x.Value, "=~") || strings.Contains(x.Value, ":~") {
				// A glob, a brace, a tilde or a dollar expands. bash expands
				// a tilde after the = of a word that looks like an
				// assignment, and after a : in it, even as an argument
				// (dd if=~root/key reads /root/key); any unquoted ~ that
				// starts a part or follows = or : counts.
				return "", false
			}
			b.WriteString(unescape(x.Value))
		case *syntax.SglQuoted:
			if x.Dollar {
				return "", false // $'...' has escapes of its own
			}
			b.WriteString(x.Value)
		case *syntax.DblQuoted:
			if x.Dollar {
				return "", false
			}
			for _, q := range x.Parts {
				l, ok := q.(*syntax.Lit)
				if !ok {
					return "", false
				}
				b.WriteString(unescapeDouble(l.Value))
			}
		default:
			return "", false
		}
	}
	return b.String(), true
}

// unescape removes the backslashes of an unquoted literal: \x is x, and a
// backslash-newline is nothing.
func unescape(s string) string {
	if !strings.ContainsRune(s, '\\') {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
			if s[i] == '\n' {
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unescapeDouble removes the backslashes that escape $, `, ", \ and a
// newline inside double quotes; others stay, as POSIX says.
func unescapeDouble(s string) string {
	if !strings.ContainsRune(s, '\\') {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("$`\"\\\n", s[i+1]) >= 0 {
			i++
			if s[i] == '\n' {
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
