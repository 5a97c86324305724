package ssh

import (
	"io"
	"strings"
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

const shExecRule = `
policy "sh" {
  resources  = ["bastion"]
  identities = ["ops"]
  rule "sh" {
    effect = "allow"
    on     = ["exec"]
    when   = "request.argv[0] == 'sh'"
    reason = "ops may run scripts"
  }
}
`

// TestTypedInputOfACommandNotRecorded: a command run with a terminal
// (ssh -t bastion sudo …) reads what its user types, and a password
// prompt turns the echo off: the typed password must not land in the
// recording. A command's input is recorded only without a terminal (a
// pipe); with one it is typed, as a shell's is, and follows
// record_shell_input.
func TestTypedInputOfACommandNotRecorded(t *testing.T) {
	const typed = "hunter2-typed-at-a-prompt"
	e := startEnv(t)
	e.publish(t, shExecRule)
	c := e.dial(t, "ops")
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RequestPty("xterm", 24, 80, gossh.TerminalModes{}); err != nil {
		t.Fatalf("pty: %v", err)
	}
	in, _ := s.StdinPipe()
	out, _ := s.StdoutPipe()
	if err := s.Start(`sh -c 'stty -echo; printf "Password: "; read p; stty echo; echo; echo "got ${#p} characters"'`); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if _, err := io.ReadAtLeast(out, buf, len("Password: ")); err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(in, typed+"\n")
	b, _ := io.ReadAll(out)
	_ = s.Wait()
	if !strings.Contains(string(b), "got 25 characters") || strings.Contains(string(b), typed) {
		t.Fatalf("output %q", b)
	}
	c.Close()
	waitSealed(t, e, 1)
	for path, evs := range e.recordings(t) {
		for _, ev := range evs {
			for _, f := range ev.Frames {
				if strings.Contains(f.Data, typed) || f.Stream == "i" {
					t.Errorf("%s: the typed input was recorded: %q %q", path, f.Stream, f.Data)
				}
			}
		}
	}
}
