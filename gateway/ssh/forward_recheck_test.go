package ssh

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/agent"

	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

// publishWithoutNoForwarding publishes the env's policy with its
// no-forwarding rule removed, plus extra, at the next revision.
func (e *env) publishWithoutNoForwarding(t *testing.T, extra string) {
	t.Helper()
	src := policyHCL(e.issuer.URL, e.up, e.hostKey, e.user, e.credential)
	i := strings.Index(src, `  rule "no-forwarding"`)
	if i < 0 {
		t.Fatal(`the test policy has no rule "no-forwarding"`)
	}
	j := strings.Index(src[i:], "  }\n") + i + len("  }\n")
	e.publishSource(t, src[:i]+src[j:]+extra)
}

const remoteForwardRule = `
policy "fwd" {
  resources  = ["bastion"]
  identities = ["dev"]
  rule "rfwd" {
    effect = %q
    on     = ["remote_forward", "forward"]
    reason = %q
  }
}
`

// TestRemoteForwardDecidedUnderBundleInForce: a remote forward granted
// under one bundle brings no new connection to the caller once a bundle
// that denies it is in force, although the session itself is still
// admitted; the refused connection is recorded, and so is each relayed one
// with its outcome. The gateway also cancels the forward upstream, so the
// host's port closes.
func TestRemoteForwardDecidedUnderBundleInForce(t *testing.T) {
	e := startEnv(t)
	e.publishWithoutNoForwarding(t, fmt.Sprintf(remoteForwardRule, "allow", "dev may expose a port"))
	c := e.dial(t, "dev")
	ln, err := c.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("remote forward: %v", err)
	}
	addr := ln.Addr().String()
	accepted := make(chan string, 4)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			b := make([]byte, 64)
			n, _ := conn.Read(b)
			accepted <- string(b[:n])
			_, _ = io.WriteString(conn, "pong")
			conn.Close()
		}
	}()
	// reached sends msg to the host's end of the forward, and reports
	// whether it reached the caller (and the caller's answer came back).
	reached := func(msg string) bool {
		t.Helper()
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Logf("dial %s: %v", addr, err)
			return false
		}
		defer nc.Close()
		_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(nc, msg)
		b, _ := io.ReadAll(nc)
		if string(b) != "pong" {
			return false
		}
		select {
		case got := <-accepted:
			return got == msg
		case <-time.After(time.Second):
			return false
		}
	}
	if !reached("before") {
		t.Fatal("the granted remote forward does not reach the caller")
	}

	e.publishWithoutNoForwarding(t, fmt.Sprintf(remoteForwardRule, "deny", "forwarding revoked"))
	if out, _, code := run(t, c, "echo still-admitted"); code != 0 || out != "still-admitted\n" {
		t.Fatalf("the session is no longer admitted: %q exit %d", out, code)
	}
	if _, err := c.Listen("tcp", "127.0.0.1:0"); err == nil {
		t.Error("a new remote forward was allowed under the denying bundle")
	}
	if reached("after") {
		t.Error("a new connection through the remote forward reached the caller under a bundle that denies remote forwards")
	}
	select {
	case got := <-accepted:
		t.Errorf("the caller accepted %q under the denying bundle", got)
	default:
	}
	// The refused connection cancelled the forward upstream: the host's
	// port no longer listens.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		nc, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		nc.Close()
		if time.Now().After(deadline) {
			t.Errorf("the host still listens on %s after the forward was revoked", addr)
			break
		}
	}

	c.Close()
	waitSealed(t, e, 1)
	var relayed, refused int
	for path, evs := range e.recordings(t) {
		results := map[int]recorder.Event{}
		for _, ev := range evs {
			if ev.Type == recorder.TypeResult {
				results[ev.Ref] = ev
			}
		}
		for _, ev := range evs {
			if ev.Type != recorder.TypeRequest || ev.Kind != "remote_forward" || !strings.HasPrefix(ev.Text, "connection to remote forward") {
				continue
			}
			if !strings.Contains(ev.Text, addr) {
				t.Errorf("recorded %q does not name the forward %s", ev.Text, addr)
			}
			switch ev.Effect {
			case "allow":
				relayed++
				res, ok := results[ev.Seq]
				// "before" one way, "pong" the other.
				if !ok || res.Bytes != int64(len("before")+len("pong")) {
					t.Errorf("the relayed connection %q has outcome %+v (found %v), want %d bytes", ev.Text, res, ok, len("before")+len("pong"))
				}
			case "deny":
				refused++
				if !strings.Contains(strings.Join(ev.Rules, " "), "rfwd") {
					t.Errorf("the refused connection names rules %v, want fwd/rfwd", ev.Rules)
				}
			}
		}
		if rep, err := recorder.Verify(path, e.recKeys); err != nil || !rep.OK() {
			t.Errorf("verify: %+v %v", rep, err)
		}
	}
	if relayed != 1 || refused != 1 {
		t.Errorf("recorded %d relayed and %d refused forwarded connections, want 1 and 1", relayed, refused)
	}
}

const agentRule = `
policy "agent" {
  resources  = ["bastion"]
  identities = ["dev"]
  rule "agent" {
    effect = %q
    on     = ["agent"]
    reason = %q
  }
  rule "list-keys" {
    effect = "allow"
    on     = ["exec"]
    when   = "request.command.startsWith('ssh-add -l; read x;')"
    reason = "dev may list the keys it forwards"
  }
}
`

// TestForwardedAgentDecidedUnderBundleInForce: agent forwarding granted
// under one bundle no longer reaches the caller's agent once a bundle that
// denies it is in force, even from the command that asked for it; each
// agent connection is recorded, the relayed one with its outcome.
func TestForwardedAgentDecidedUnderBundleInForce(t *testing.T) {
	e := startEnv(t)
	e.publishWithoutNoForwarding(t, fmt.Sprintf(agentRule, "allow", "dev may forward its agent"))
	c := e.dial(t, "dev")
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keyring := agent.NewKeyring()
	if err := keyring.Add(agent.AddedKey{PrivateKey: key, Comment: "forwarded-key"}); err != nil {
		t.Fatal(err)
	}
	if err := agent.ForwardToAgent(c, keyring); err != nil {
		t.Fatal(err)
	}
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := agent.RequestAgentForwarding(s); err != nil {
		t.Fatalf("agent forwarding: %v", err)
	}
	in, _ := s.StdinPipe()
	out, _ := s.StdoutPipe()
	s.Stderr = io.Discard
	if err := s.Start("ssh-add -l; read x; ssh-add -l || echo agent-refused"); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	if !lines.Scan() || !strings.Contains(lines.Text(), "forwarded-key") {
		t.Fatalf("the granted agent is not reached: %q %v", lines.Text(), lines.Err())
	}

	e.publishWithoutNoForwarding(t, fmt.Sprintf(agentRule, "deny", "agent forwarding revoked"))
	_, _ = io.WriteString(in, "\n")
	_ = in.Close()
	var rest []string
	for lines.Scan() {
		rest = append(rest, lines.Text())
	}
	_ = s.Wait()
	if got := strings.Join(rest, "\n"); strings.Contains(got, "forwarded-key") || !strings.Contains(got, "agent-refused") {
		t.Errorf("under the denying bundle the command's agent gave %q, want it refused", got)
	}

	c.Close()
	waitSealed(t, e, 1)
	var relayed, refused int
	for _, evs := range e.recordings(t) {
		results := map[int]recorder.Event{}
		for _, ev := range evs {
			if ev.Type == recorder.TypeResult {
				results[ev.Ref] = ev
			}
		}
		for _, ev := range evs {
			if ev.Type != recorder.TypeRequest || ev.Kind != "agent" || ev.Text != "agent connection" {
				continue
			}
			switch ev.Effect {
			case "allow":
				relayed++
				if res, ok := results[ev.Seq]; !ok || res.Bytes == 0 {
					t.Errorf("the relayed agent connection has outcome %+v (found %v), want the bytes it carried", res, ok)
				}
			case "deny":
				refused++
			}
		}
	}
	if relayed != 1 || refused != 1 {
		t.Errorf("recorded %d relayed and %d refused agent connections, want 1 and 1", relayed, refused)
	}
}
