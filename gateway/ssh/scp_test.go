package ssh

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

const scpRule = `
policy "scp" {
  resources  = ["bastion"]
  identities = ["ops"]
  rule "scp" {
    effect = "allow"
    on     = ["exec"]
    when   = "request.argv[0] in ['scp', '/usr/lib/openssh/sftp-server']"
    reason = "ops may copy files"
  }
}
`

// TestScpFileContentsNotRecorded: scp's classic protocol (scp -O, and
// every OpenSSH client before 9.0) runs `scp -t` or `scp -f` on the host
// as a command, and the file's bytes are that command's input or output.
// A recording is an audit trail, not a file store: as with sftp, the
// transfer is recorded with its bytes counted, not the bytes themselves.
func TestScpFileContentsNotRecorded(t *testing.T) {
	const content = "-----BEGIN PRIVATE KEY----- file contents that must not be recorded\n"
	e := startEnv(t)
	e.publish(t, scpRule)
	c := e.dial(t, "ops")
	name := fmt.Sprintf("gatehouse-scp-%d", time.Now().UnixNano())
	t.Cleanup(func() { os.Remove("/tmp/" + name) })

	// Upload: scp -t.
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	in, _ := s.StdinPipe()
	out, _ := s.StdoutPipe()
	br := bufio.NewReader(out)
	ack := func(what string) {
		t.Helper()
		b, err := br.ReadByte()
		if err != nil || b != 0 {
			rest, _ := br.ReadString('\n')
			t.Fatalf("%s: no ack: %v %q%s", what, err, b, rest)
		}
	}
	if err := s.Start("scp -t /tmp/"); err != nil {
		t.Fatal(err)
	}
	ack("start")
	fmt.Fprintf(in, "C0644 %d %s\n", len(content), name)
	ack("header")
	io.WriteString(in, content+"\x00")
	ack("content")
	in.Close()
	_ = s.Wait()

	// Download: scp -f.
	s, err = c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	in, _ = s.StdinPipe()
	out, _ = s.StdoutPipe()
	br = bufio.NewReader(out)
	if err := s.Start("scp -f /tmp/" + name); err != nil {
		t.Fatal(err)
	}
	io.WriteString(in, "\x00")
	header, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(header, "C0644") {
		t.Fatalf("download header %q %v", header, err)
	}
	io.WriteString(in, "\x00")
	got := make([]byte, len(content))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != content {
		t.Fatalf("download: %q %v", got, err)
	}
	ack("download")
	io.WriteString(in, "\x00")
	in.Close()
	_ = s.Wait()

	// The SFTP server run as a command (sftp -s PATH): its packets carry
	// file contents; an INIT with an extension stands in for them here.
	s, err = c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	in, _ = s.StdinPipe()
	out, _ = s.StdoutPipe()
	if err := s.Start("/usr/lib/openssh/sftp-server"); err != nil {
		t.Fatal(err)
	}
	ext := "file contents in an sftp packet"
	pkt := binary.BigEndian.AppendUint32(nil, 0)
	pkt = append(pkt, 1) // SSH_FXP_INIT
	pkt = binary.BigEndian.AppendUint32(pkt, 3)
	for _, f := range []string{"x-test@gatehouse", ext} {
		pkt = binary.BigEndian.AppendUint32(pkt, uint32(len(f)))
		pkt = append(pkt, f...)
	}
	binary.BigEndian.PutUint32(pkt, uint32(len(pkt)-4))
	_, _ = in.Write(pkt)
	var hdr [5]byte
	if _, err := io.ReadFull(out, hdr[:]); err != nil || hdr[4] != 2 { // SSH_FXP_VERSION
		t.Fatalf("sftp-server: %v %v", hdr, err)
	}
	in.Close()
	_ = s.Wait()
	c.Close()

	waitSealed(t, e, 1)
	var ran int
	for path, evs := range e.recordings(t) {
		for _, ev := range evs {
			if ev.Kind == "exec" && (strings.HasPrefix(ev.Text, "scp -") || strings.HasSuffix(ev.Text, "sftp-server")) {
				ran++
			}
			for _, f := range ev.Frames {
				if strings.Contains(f.Data, "file contents") {
					t.Errorf("%s: the file's bytes were recorded (%s): %q", path, f.Stream, f.Data)
				}
			}
		}
	}
	if ran < 3 {
		t.Errorf("the transfers are not in the recording (%d)", ran)
	}
}

// TestProgramNamedScpStillRecorded: whoever can run commands can put any
// program at a path ending in scp (/tmp/x/scp, ./scp). Taking it for
// scp's end of a transfer would keep its output out of the recording:
// another program's output hidden behind the name. Only scp as the host
// finds it by name, or in a system directory, counts.
func TestProgramNamedScpStillRecorded(t *testing.T) {
	const said = "output a recording must keep"
	e := startEnv(t)
	e.publish(t, `
policy "any" {
  resources  = ["bastion"]
  identities = ["ops"]
  rule "any" {
    effect = "allow"
    on     = ["exec"]
    reason = "ops may run commands"
  }
}
`)
	c := e.dial(t, "ops")
	dir := fmt.Sprintf("/tmp/gatehouse-notscp-%d", time.Now().UnixNano())
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, cmd := range []string{
		"mkdir -p " + dir + " && ln -sf /bin/echo " + dir + "/scp && ln -sf /bin/echo " + dir + "/rsync && printf '#!/bin/sh\\necho " + said + " >&2\\n' > " + dir + "/ssh && chmod +x " + dir + "/ssh",
		dir + "/scp -t " + said,
		dir + "/rsync --server " + said,
		// The real scp, made to run another program as its ssh: an
		// option that holds a t or an f is not the -t or -f of a
		// transfer's host end.
		"scp -oStrictHostKeyChecking=no -S " + dir + "/ssh elsewhere:file " + dir + "/copy",
	} {
		s, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		out, err := s.CombinedOutput(cmd)
		t.Logf("%s: %v %q", cmd, err, out)
	}
	c.Close()
	waitSealed(t, e, 1)
	kept := 0
	for _, evs := range e.recordings(t) {
		for _, ev := range evs {
			for _, f := range ev.Frames {
				if strings.Contains(f.Data, said) {
					kept++
				}
			}
		}
	}
	if kept < 3 {
		t.Errorf("the output of programs passed off as a transfer's host end: %d of 3 kept", kept)
	}
}
