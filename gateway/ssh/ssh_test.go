package ssh

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/internal/clock"
	"github.com/gatehouse-dev/gatehouse/internal/sshd"
)

// TestExecAllowedAndDenied: each command is decided on its own; a denied
// one gets the rule on stderr and exit status 126, and the connection goes
// on serving what is allowed.
func TestExecAllowedAndDenied(t *testing.T) {
	e := startEnv(t)
	c := e.dial(t, "dev")
	out, _, code := run(t, c, "echo hello from upstream")
	if out != "hello from upstream\n" || code != 0 {
		t.Fatalf("allowed exec: %q exit %d", out, code)
	}
	out, stderr, code := run(t, c, "rm -rf ./build")
	if code != exitRefused || out != "" || !strings.Contains(stderr, "everyone/no-rm") || !strings.Contains(stderr, "nobody removes files") {
		t.Fatalf("denied exec: stdout %q stderr %q exit %d", out, stderr, code)
	}
	// A command that is not one simple command has no argv: the argv rule
	// does not allow it.
	if _, stderr, code := run(t, c, "echo hi; id"); code != exitRefused || !strings.Contains(stderr, "deny by default") {
		t.Fatalf("a list of commands: %q exit %d", stderr, code)
	}
	if out, _, code := run(t, c, "printf '%s-%s' 'a b' c"); out != "a b-c" || code != 0 {
		t.Fatalf("quoted words: %q exit %d", out, code)
	}
	// The exit status of the upstream's command comes through.
	if _, _, code := run(t, c, "cat /nonexistent-file"); code != 1 {
		t.Errorf("exit status %d, want cat's 1", code)
	}
	// A shell is refused for dev, with the reason.
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	var serr strings.Builder
	s.Stderr = &serr
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	err = s.Wait()
	var ee *gossh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != exitRefused || !strings.Contains(serr.String(), "deny by default") {
		t.Fatalf("shell for dev: %v %q", err, serr.String())
	}
	c.Close()
	rs := e.recordings(t)
	var texts []string
	for _, evs := range rs {
		for _, ev := range evs {
			if ev.Type == recorder.TypeRequest {
				texts = append(texts, ev.Effect+" "+ev.Text)
			}
		}
	}
	got := strings.Join(texts, "\n")
	for _, want := range []string{"allow echo hello from upstream", "deny rm -rf ./build", "deny echo hi; id", "deny shell"} {
		if !strings.Contains(got, want) {
			t.Errorf("recorded requests %q lack %q", texts, want)
		}
	}
}

// TestShellAndRecording: ops gets a terminal and a shell; its output is
// recorded with timing as output frames, its input is not (passwords are
// typed into shells), and the recording verifies.
func TestShellAndRecording(t *testing.T) {
	e := startEnv(t)
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
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(in, "echo secret-typed-$((6*7))\nexit\n")
	b, _ := io.ReadAll(out)
	_ = s.Wait()
	if !strings.Contains(string(b), "secret-typed-42") {
		t.Fatalf("shell output %q", b)
	}
	c.Close()
	waitSealed(t, e, 1)
	for path, evs := range e.recordings(t) {
		var shell bool
		var output strings.Builder
		for _, ev := range evs {
			if ev.Type == recorder.TypeRequest && ev.Kind == "shell" && ev.Effect == "allow" {
				shell = true
			}
			for _, f := range ev.Frames {
				if f.Stream == "i" {
					t.Errorf("shell input was recorded: %q", f.Data)
				}
				output.WriteString(f.Data)
			}
		}
		if !shell || !strings.Contains(output.String(), "secret-typed-42") {
			t.Errorf("recording %s: shell %v output %q", path, shell, output.String())
		}
		if rep, err := recorder.Verify(path, e.recKeys); err != nil || !rep.OK() {
			t.Errorf("verify: %+v %v", rep, err)
		}
		if evs[0].Protocol != "ssh" || evs[0].Identity != "ops" || evs[0].Resource != "bastion" {
			t.Errorf("start %+v", evs[0])
		}
	}
}

func waitSealed(t *testing.T, e *env, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ss, _ := recorder.List(e.recDir)
		sealed := 0
		for _, s := range ss {
			if s.Sealed {
				sealed++
			}
		}
		if sealed >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d recordings sealed", sealed, n)
		}
	}
}

// TestForwardDenied: a local forward is refused at the channel open with
// the rule's reason; the session goes on.
func TestForwardDenied(t *testing.T) {
	e := startEnv(t)
	c := e.dial(t, "ops")
	_, err := c.Dial("tcp", "127.0.0.1:5432")
	var oce *gossh.OpenChannelError
	if !errors.As(err, &oce) || oce.Reason != gossh.Prohibited || !strings.Contains(oce.Message, "port forwarding through the bastion is not allowed") {
		t.Fatalf("forward: %v", err)
	}
	if _, err := c.Listen("tcp", "127.0.0.1:0"); err == nil {
		t.Fatal("a remote forward was allowed")
	}
	if out, _, code := run(t, c, "uptime"); code != 0 || out == "" {
		t.Fatalf("after the refused forwards: %q %d", out, code)
	}
}

// TestPublicKeysRefused: an SSH key is not a way in; the caller is told to
// use a token.
func TestPublicKeysRefused(t *testing.T) {
	e := startEnv(t)
	signer, err := gossh.ParsePrivateKey(e.up.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	var banner string
	_, err = gossh.Dial("tcp", e.addr, &gossh.ClientConfig{User: "bastion", Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), BannerCallback: func(m string) error { banner += m; return nil }})
	if err == nil || !strings.Contains(banner, "OIDC access token") {
		t.Fatalf("public key: %v, banner %q", err, banner)
	}
	// A bad token, and an unknown host, are refused with a reason.
	banner = ""
	_, err = gossh.Dial("tcp", e.addr, &gossh.ClientConfig{User: "bastion", Auth: []gossh.AuthMethod{gossh.Password("not-a-token")},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), BannerCallback: func(m string) error { banner += m; return nil }})
	if err == nil || !strings.Contains(banner, "token rejected") {
		t.Fatalf("bad token: %v, banner %q", err, banner)
	}
	banner = ""
	_, err = gossh.Dial("tcp", e.addr, &gossh.ClientConfig{User: "elsewhere", Auth: []gossh.AuthMethod{gossh.Password(e.issuer.Token(t, "ops", "gatehouse"))},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), BannerCallback: func(m string) error { banner += m; return nil }})
	if err == nil || !strings.Contains(banner, "use the host's name as the SSH user") {
		t.Fatalf("unknown host: %v, banner %q", err, banner)
	}
	// The token as a keyboard-interactive answer works as the password.
	tok := e.issuer.Token(t, "ops", "gatehouse")
	c, err := e.dialToken("", "bastion", gossh.KeyboardInteractive(func(_, _ string, qs []string, _ []bool) ([]string, error) {
		return []string{tok}, nil
	}))
	if err != nil {
		t.Fatalf("keyboard-interactive: %v", err)
	}
	defer c.Close()
	if out, _, code := run(t, c, "uptime"); code != 0 || out == "" {
		t.Fatalf("uptime: %q %d", out, code)
	}
}

// TestHostKeyPinned: an upstream whose host key is not the pinned one is
// refused, and the caller sees both fingerprints.
func TestHostKeyPinned(t *testing.T) {
	e := startEnv(t)
	other := sshdOther(t)
	e.hostKey = other
	e.publish(t)
	c := e.dial(t, "ops")
	_, err := c.NewSession()
	var oce *gossh.OpenChannelError
	if !errors.As(err, &oce) || !strings.Contains(oce.Message, "is not the pinned one") ||
		!strings.Contains(oce.Message, fingerprintOf(t, other)) || !strings.Contains(oce.Message, fingerprintOf(t, e.up.HostKey)) {
		t.Fatalf("session on a host with another key: %v", err)
	}
}

// sshdOther is a host key that is not the test server's.
func sshdOther(t *testing.T) string {
	t.Helper()
	return "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOEUTqBqeZQjtMndz1LphtYO5IcPCLaCN3hxN0yK1Sen"
}

func fingerprintOf(t *testing.T, line string) string {
	t.Helper()
	k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	return gossh.FingerprintSHA256(k)
}

// TestCredentialNeverShown: the upstream's private key appears in no
// output, error, log or recording.
func TestCredentialNeverShown(t *testing.T) {
	e := startEnv(t)
	c := e.dial(t, "ops")
	run(t, c, "uptime")
	run(t, c, "rm -rf /tmp/x")
	c.Close()
	waitSealed(t, e, 1)
	body := keyBody(string(e.up.ClientKey))
	if strings.Contains(e.logs.String(), body) {
		t.Error("the log holds the upstream key")
	}
	for path := range e.recordings(t) {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), body) {
			t.Errorf("%s holds the upstream key", path)
		}
	}
}

// keyBody is a stretch of a PEM key's base64, enough to find it.
func keyBody(pem string) string {
	lines := strings.Split(pem, "\n")
	return lines[2]
}

// TestContinuousVerification: the token's expiry and a revoking bundle
// end the connection at once, without waiting for the caller's next
// channel: a running command's stderr says why, and the connection closes.
func TestContinuousVerification(t *testing.T) {
	clk := clock.NewFake(time.Now())
	e := startEnvClock(t, clk)
	claims := e.issuer.Claims("ops", "gatehouse")
	claims["exp"] = clk.Now().Add(time.Minute).Unix()
	c, err := e.dialToken(e.issuer.Sign(t, claims), "bastion")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, code := run(t, c, "uptime"); code != 0 {
		t.Fatal("uptime refused")
	}
	stderr := startLong(t, c)
	clk.Advance(2 * time.Minute)
	waitEnded(t, c, stderr, "token expired")

	// A bundle that revokes the connection.
	c2 := e.dial(t, "dev")
	if _, _, code := run(t, c2, "uptime"); code != 0 {
		t.Fatal("uptime refused")
	}
	stderr = startLong(t, c2)
	e.publish(t, `
policy "revoke" {
  resources  = ["bastion"]
  identities = ["dev"]
  rule "out" {
    effect = "deny"
    on     = ["connect"]
    reason = "dev is off the bastion"
  }
}`)
	waitEnded(t, c2, stderr, "dev is off the bastion")
}

// startLong starts a command that runs until the connection ends, and
// returns what its stderr will say.
func startLong(t *testing.T, c *gossh.Client) *syncBuffer {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	errb := &syncBuffer{}
	s.Stderr = errb
	if err := s.Start("sleep 30"); err != nil {
		t.Fatal(err)
	}
	return errb
}

// waitEnded waits (at most a second) for the gateway to close the
// connection, and checks that the caller was told why.
func waitEnded(t *testing.T, c *gossh.Client, stderr *syncBuffer, why string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatalf("the connection was not ended within a second (%s)", why)
	}
	for deadline := time.Now().Add(time.Second); !strings.Contains(stderr.String(), why) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(stderr.String(), why) {
		t.Fatalf("stderr %q does not say %q", stderr.String(), why)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestExecHeldForApproval: a command under review waits, the caller sees
// the approval id on stderr, and it runs once approved.
func TestExecHeldForApproval(t *testing.T) {
	e := startEnv(t)
	c := e.dial(t, "ops")
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out strings.Builder
	stderr, _ := s.StderrPipe()
	s.Stdout = &out
	if err := s.Start("echo approved-run"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, _ := stderr.Read(buf)
	line := string(buf[:n])
	id := ""
	for _, f := range strings.Fields(line) {
		if strings.HasPrefix(f, "ap-") {
			id = strings.TrimRight(f, " ,.;:)")
			break
		}
	}
	if !strings.Contains(line, "held for approval") || id == "" {
		t.Fatalf("stderr %q", line)
	}
	approver := approval.Principal{Issuer: "x", Subject: "ops-2", Groups: []string{"ops"}}
	if _, err := e.apv.Vote(context.Background(), id, approver, true, "fine"); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = io.Copy(io.Discard, stderr) }()
	if err := s.Wait(); err != nil || out.String() != "approved-run\n" {
		t.Fatalf("after approval: %v %q", err, out.String())
	}
}

// TestMalformedPayloads: a client that sends garbage payloads gets a
// refusal, not a crash; the connection survives.
func TestMalformedPayloads(t *testing.T) {
	e := startEnv(t)
	c := e.dial(t, "ops")
	ch, reqs, err := c.OpenChannel("session", nil)
	if err != nil {
		t.Fatal(err)
	}
	go gossh.DiscardRequests(reqs)
	for _, typ := range []string{"exec", "subsystem", "env", "pty-req", "x11-req", "window-change", "nonsense"} {
		ok, err := ch.SendRequest(typ, true, []byte{0xff, 0xff, 0xff})
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if ok {
			t.Errorf("%s with a malformed payload succeeded", typ)
		}
	}
	ch.Close()
	if _, _, err := c.SendRequest("tcpip-forward", true, []byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Dial("tcp", net.JoinHostPort("127.0.0.1", "1")); err == nil {
		t.Error("a forward was allowed")
	}
	if out, _, code := run(t, c, "uptime"); code != 0 || out == "" {
		t.Fatalf("after garbage: %q %d", out, code)
	}
}

// TestPasswordCredential: the gateway logs in upstream with a password it
// holds (a system user with a password; needs root), and the password
// appears in no output, log or recording.
func TestPasswordCredential(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a password login needs a system user (useradd, chpasswd): run as root, as CI does")
	}
	e := startEnvClock(t, clock.Real, sshd.WithPasswordUser("gatehouse-pwtest"))
	c := e.dial(t, "ops")
	out, _, code := run(t, c, "echo logged in with a password")
	if code != 0 || out != "logged in with a password\n" {
		t.Fatalf("exec: %q %d", out, code)
	}
	c.Close()
	waitSealed(t, e, 1)
	if strings.Contains(e.logs.String(), e.up.Password) {
		t.Error("the log holds the upstream password")
	}
	for path := range e.recordings(t) {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), e.up.Password) {
			t.Errorf("%s holds the upstream password", path)
		}
	}
}
