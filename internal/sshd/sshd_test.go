package sshd

import (
	"os"
	"strings"
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

// TestStart: the server takes its authorized key, shows the pinned host
// key, and runs a command.
func TestStart(t *testing.T) {
	s, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	signer, err := gossh.ParsePrivateKey(s.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	pinned, _, _, _, err := gossh.ParseAuthorizedKey([]byte(s.HostKey))
	if err != nil {
		t.Fatal(err)
	}
	c, err := gossh.Dial("tcp", s.Addr, &gossh.ClientConfig{User: s.User, Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.FixedHostKey(pinned)})
	if err != nil {
		t.Fatalf("dial: %v\n%s", err, s.Log())
	}
	defer c.Close()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.Output("echo hello")
	if err != nil || strings.TrimSpace(string(out)) != "hello" {
		t.Fatalf("exec: %q %v", out, err)
	}
	dir := s.dir
	s.Close()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("dir left behind: %v", err)
	}
}
