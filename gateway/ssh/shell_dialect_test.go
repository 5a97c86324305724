package ssh

import (
	"strings"
	"testing"
)

// TestExecArgvAsTheShellExpandsIt: a rule reads an exec's words as the
// login shell will run them. bash (root's shell here) expands an unquoted
// ~ after the = of a word that looks like an assignment, and after a :
// in it, even where the word is an argument: `dd if=~root/key` reads
// /root/key. Such a word is not literal, so the command is not simple,
// and the test policy (echo only when simple) refuses it.
func TestExecArgvAsTheShellExpandsIt(t *testing.T) {
	e := startEnv(t)
	c := e.dial(t, "ops")
	for _, cmd := range []string{`echo a=~root/x`, `echo PATH=/bin:~root/bin`} {
		out, stderr, code := run(t, c, cmd)
		if code != exitRefused || strings.Contains(out, "/root") {
			t.Errorf("%s: the policy saw %q, the shell ran it as %q (exit %d, %q)", cmd, strings.TrimPrefix(cmd, "echo "), strings.TrimSpace(out), code, stderr)
		}
	}
	// A ~ that is quoted, or not after = or :, is literal.
	if out, _, code := run(t, c, `echo 'a=~root' b~c`); code != 0 || out != "a=~root b~c\n" {
		t.Errorf("literal tildes: %d %q", code, out)
	}
}
