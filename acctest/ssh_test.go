package acctest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/hydratest"
	"github.com/gatehouse-dev/gatehouse/internal/sshd"
	"github.com/gatehouse-dev/gatehouse/internal/sshdtest"
)

// The SSH gateway end to end: the gatehouse binary serving SSH only (no
// postgres block), OpenSSH's sshd as the upstream, ORY Hydra's tokens, and
// the real ssh, scp and sftp clients.

func sshPolicy(issuer string, up *sshd.Server, hostKey string) string {
	return fmt.Sprintf(`
identity_provider "hydra" {
  issuer    = %q
  audiences = ["gatehouse"]
}

identity "ops-1" {
  provider = "hydra"
  subject  = "ops-1"
  groups   = ["ops"]
}

identity "ops-2" {
  provider = "hydra"
  subject  = "ops-2"
  groups   = ["ops"]
}

identity "dev-1" {
  provider = "hydra"
  subject  = "dev-1"
}

ssh_host "bastion" {
  address     = %q
  user        = %q
  host_key    = %q
  private_key = "env:BASTION_KEY"
}

policy "bastion" {
  resources  = ["bastion"]
  identities = ["ops-1", "ops-2", "dev-1"]

  rule "connect" {
    effect = "allow"
    on     = ["connect"]
    reason = "ops and dev may connect"
  }

  rule "diagnostics" {
    effect = "allow"
    on     = ["exec"]
    when   = "request.simple && request.argv[0] in ['uptime', 'echo', 'cat']"
    reason = "read-only diagnostics"
  }

  rule "no-rm" {
    effect = "deny"
    on     = ["exec"]
    when   = "request.simple && request.argv[0] == 'rm'"
    reason = "nobody removes files through the bastion"
  }

  rule "no-forwarding" {
    effect = "deny"
    on     = ["forward", "remote_forward"]
    reason = "port forwarding through the bastion is not allowed"
  }
}

policy "ops" {
  resources  = ["bastion"]
  identities = ["ops-1", "ops-2"]

  rule "shell" {
    effect = "allow"
    on     = ["shell", "pty", "subsystem", "env"]
    reason = "ops may use a shell and sftp"
  }

  rule "touch" {
    effect = "review"
    on     = ["exec"]
    when   = "request.simple && request.argv[0] == 'touch'"
    reason = "changes on the bastion need a second operator"
    approval {
      groups  = ["ops"]
      timeout = "2m"
    }
  }
}
`, issuer, up.Addr, up.User, hostKey)
}

type sshStack struct {
	dir, dataDir, adminAddr, sshAddr string
	hydra                            *hydratest.Hydra
	up                               *sshd.Server
	policies, bundleFile, keyFile    string
	knownHosts                       string
	gateway                          *exec.Cmd
	exited                           chan error
	logs                             *lockedBuffer
}

func startSSHStack(t *testing.T) *sshStack {
	t.Helper()
	for _, bin := range []string{"ssh", "scp", "sftp", "setsid"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is required (apt package openssh-client, util-linux): %v", bin, err)
		}
	}
	s := &sshStack{dir: t.TempDir(), hydra: hydratest.Start(t), up: sshdtest.Start(t), logs: &lockedBuffer{}}
	for _, id := range []string{"ops-1", "ops-2", "dev-1"} {
		s.hydra.CreateClient(t, id, id+"-secret", []string{"gatehouse"})
	}
	s.policies = filepath.Join(s.dir, "policies")
	if err := os.MkdirAll(s.policies, 0o755); err != nil {
		t.Fatal(err)
	}
	gh(t, "keygen", "--out", filepath.Join(s.dir, "keys"))
	s.keyFile = filepath.Join(s.dir, "keys", "gatehouse.key")
	s.bundleFile = filepath.Join(s.dir, "policy.bundle")
	s.publish(t, s.up.HostKey)
	s.dataDir = filepath.Join(s.dir, "data")
	s.adminAddr, s.sshAddr = freePort(t), freePort(t)
	cfg := fmt.Sprintf(`data_dir = %q

ssh {
  listen = %q
}

bundle {
  file          = %q
  trusted_keys  = [%q]
  poll_interval = "1s"
}

admin {
  listen = %q
}

log {
  level = "debug"
}
`, s.dataDir, s.sshAddr, s.bundleFile, filepath.Join(s.dir, "keys", "gatehouse.pub"), s.adminAddr)
	cfgFile := filepath.Join(s.dir, "gateway.hcl")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s.gateway = exec.Command(gatehouseBin, "gateway", "--config", cfgFile)
	s.gateway.Env = append(os.Environ(), "BASTION_KEY="+string(s.up.ClientKey))
	check := exec.Command(gatehouseBin, "gateway", "--config", cfgFile, "--check")
	check.Env = s.gateway.Env
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("gateway --check: %v\n%s", err, out)
	}
	s.gateway.Stdout, s.gateway.Stderr = s.logs, s.logs
	if err := s.gateway.Start(); err != nil {
		t.Fatal(err)
	}
	s.exited = make(chan error, 1)
	go func() { s.exited <- s.gateway.Wait() }()
	t.Cleanup(func() {
		_ = s.gateway.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			_ = s.gateway.Process.Kill()
			t.Error("gateway did not stop on SIGTERM")
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", s.logs.String())
		}
	})
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + s.adminAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway not ready: %v\n%s", err, s.logs.String())
		}
	}
	// The caller pins the gateway's host key, as users would from its
	// fingerprint.
	pub, err := os.ReadFile(filepath.Join(s.dataDir, "ssh_host_ed25519_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(s.sshAddr)
	s.knownHosts = filepath.Join(s.dir, "known_hosts")
	if err := os.WriteFile(s.knownHosts, []byte(fmt.Sprintf("[%s]:%s %s", host, port, pub)), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// publish builds and publishes a bundle whose bastion pins hostKey.
func (s *sshStack) publish(t *testing.T, hostKey string, extra ...string) {
	t.Helper()
	src := sshPolicy(s.hydra.Issuer(), s.up, hostKey) + strings.Join(extra, "\n")
	if err := os.WriteFile(filepath.Join(s.policies, "policy.hcl"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := s.bundleFile + ".new"
	gh(t, "bundle", "build", s.policies, "--key", s.keyFile, "--out", tmp, "--revision", fmt.Sprint(time.Now().UnixNano()/1000))
	if err := os.Rename(tmp, s.bundleFile); err != nil {
		t.Fatal(err)
	}
}

func (s *sshStack) waitRevisionChange(t *testing.T, from string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if rev := s.revision(t); rev != from {
			return
		}
	}
	t.Fatal("the gateway did not load the new bundle")
}

func (s *sshStack) revision(t *testing.T) string {
	resp, err := http.Get("http://" + s.adminAddr + "/v1/bundle")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return b.String()
}

// client runs an OpenSSH client (ssh, scp or sftp) as client, its Hydra
// token given as the password through SSH_ASKPASS, with no terminal.
func (s *sshStack) client(t *testing.T, who string, stdin string, prog string, args ...string) (string, string, int) {
	t.Helper()
	tokenFile := filepath.Join(s.dir, who+".token")
	if err := os.WriteFile(tokenFile, []byte(s.hydra.Token(t, who, who+"-secret", []string{"gatehouse"})), 0o600); err != nil {
		t.Fatal(err)
	}
	// Hydra's tokens are longer than OpenSSH's 1023-byte prompts: the
	// gatehouse-askpass link answers the gateway's prompts part by part.
	askpass := filepath.Join(s.dir, "gatehouse-askpass")
	if _, err := os.Lstat(askpass); err != nil {
		if err := os.Symlink(gatehouseBin, askpass); err != nil {
			t.Fatal(err)
		}
	}
	_, port, _ := net.SplitHostPort(s.sshAddr)
	portFlag := "-p"
	if prog != "ssh" {
		portFlag = "-P"
	}
	all := append([]string{"-w", prog, "-F", "/dev/null", portFlag, port, "-o", "UserKnownHostsFile=" + s.knownHosts,
		"-o", "StrictHostKeyChecking=yes", "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=keyboard-interactive",
		"-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=10"}, args...)
	cmd := exec.Command("setsid", all...)
	cmd.Env = append(os.Environ(), "SSH_ASKPASS="+askpass, "SSH_ASKPASS_REQUIRE=force", "DISPLAY=none", "GATEHOUSE_TOKEN_FILE="+tokenFile)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("%s %v did not finish: %s", prog, args, errb.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func TestSSHWithHydra(t *testing.T) {
	s := startSSHStack(t)
	target := "bastion@127.0.0.1"

	t.Run("ssh exec allowed and denied per rule", func(t *testing.T) {
		out, stderr, code := s.client(t, "dev-1", "", "ssh", target, "echo hello through the gateway")
		if code != 0 || out != "hello through the gateway\n" {
			t.Fatalf("allowed: exit %d %q %s", code, out, stderr)
		}
		out, stderr, code = s.client(t, "dev-1", "", "ssh", target, "rm -rf ./build")
		if code != 126 || out != "" || !strings.Contains(stderr, "bastion/no-rm") || !strings.Contains(stderr, "nobody removes files") {
			t.Fatalf("denied: exit %d stdout %q stderr %q", code, out, stderr)
		}
	})
	t.Run("a shell for ops, none for dev", func(t *testing.T) {
		out, stderr, code := s.client(t, "ops-1", "echo shell-ok-$((40+2))\nexit 3\n", "ssh", "-T", target)
		if code != 3 || !strings.Contains(out, "shell-ok-42") {
			t.Fatalf("ops shell: exit %d %q %s", code, out, stderr)
		}
		_, stderr, code = s.client(t, "dev-1", "echo nope\n", "ssh", "-T", target)
		if code != 126 || !strings.Contains(stderr, "deny by default") {
			t.Fatalf("dev shell: exit %d %q", code, stderr)
		}
	})
	t.Run("sftp and scp where allowed", func(t *testing.T) {
		local := filepath.Join(s.dir, "upload.txt")
		if err := os.WriteFile(local, []byte("carried by sftp\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		remote := filepath.Join(os.TempDir(), fmt.Sprintf("gatehouse-sftp-%d.txt", time.Now().UnixNano()))
		defer os.Remove(remote)
		back := filepath.Join(s.dir, "download.txt")
		_, stderr, code := s.client(t, "ops-1", fmt.Sprintf("put %s %s\nget %s %s\n", local, remote, remote, back), "sftp", target)
		if code != 0 {
			t.Fatalf("sftp: exit %d %s", code, stderr)
		}
		if b, err := os.ReadFile(back); err != nil || string(b) != "carried by sftp\n" {
			t.Fatalf("round trip: %q %v", b, err)
		}
		copied := filepath.Join(s.dir, "scp.txt")
		if _, stderr, code := s.client(t, "ops-1", "", "scp", target+":"+remote, copied); code != 0 {
			t.Fatalf("scp: exit %d %s", code, stderr)
		}
		if _, _, code := s.client(t, "dev-1", "", "sftp", target); code == 0 {
			t.Fatal("dev got sftp")
		}
	})
	t.Run("local forwarding denied by rule", func(t *testing.T) {
		local := freePort(t)
		_, port, _ := net.SplitHostPort(local)
		// ssh -N -L: the client opens the forward when a connection comes;
		// the gateway refuses it, and ssh says why.
		_, stderr, _ := s.forwardAttempt(t, "ops-1", target, port)
		if !strings.Contains(stderr, "port forwarding through the bastion is not allowed") {
			t.Fatalf("forward: %q", stderr)
		}
	})
	t.Run("an exec under review runs once approved with the CLI", func(t *testing.T) {
		marker := filepath.Join(os.TempDir(), fmt.Sprintf("gatehouse-approved-%d", time.Now().UnixNano()))
		defer os.Remove(marker)
		type result struct {
			out, stderr string
			code        int
		}
		done := make(chan result, 1)
		go func() {
			out, stderr, code := s.client(t, "ops-1", "", "ssh", target, "touch "+marker)
			done <- result{out, stderr, code}
		}()
		var id string
		for deadline := time.Now().Add(20 * time.Second); id == "" && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			out, _ := s.approvals(t, "ops-2", "list", "-o", "json")
			if i := strings.Index(out, `"id": "ap-`); i >= 0 {
				id = out[i+7 : i+7+19]
			}
		}
		if id == "" {
			t.Fatal("no approval request appeared")
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatal("the command ran before it was approved")
		}
		if out, code := s.approvals(t, "ops-2", "approve", id, "--comment", "ok"); code != 0 {
			t.Fatalf("approve: %d %s", code, out)
		}
		r := <-done
		if r.code != 0 || !strings.Contains(r.stderr, "held for approval "+id) {
			t.Fatalf("held exec: exit %d %q", r.code, r.stderr)
		}
		if _, err := os.Stat(marker); err != nil {
			t.Fatalf("the approved command did not run: %v", err)
		}
	})
	t.Run("recordings replay, export to asciicast, and verify", func(t *testing.T) {
		out, _, code := s.client(t, "ops-1", "echo replay-me-$((2*21))\nexit\n", "ssh", "-T", target)
		if code != 0 || !strings.Contains(out, "replay-me-42") {
			t.Fatalf("shell: %d %q", code, out)
		}
		id := s.lastSession(t, "ops-1")
		replay := gh(t, "replay", id, "--data-dir", s.dataDir, "--format", "terminal", "--speed", "100")
		if !strings.Contains(replay, "replay-me-42") {
			t.Fatalf("terminal replay: %q", replay)
		}
		timeline := gh(t, "replay", id, "--data-dir", s.dataDir, "--format", "timeline")
		if !strings.Contains(timeline, "(ssh)") || !strings.Contains(timeline, "ALLOW  shell") || !strings.Contains(timeline, "OK ") {
			t.Fatalf("timeline: %s", timeline)
		}
		cast := filepath.Join(s.dir, "s.cast")
		castJSON, err := exec.Command(gatehouseBin, "replay", id, "--data-dir", s.dataDir, "--format", "asciicast").Output()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cast, castJSON, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := exec.LookPath("asciinema"); err != nil {
			t.Fatalf("asciinema is required (apt package asciinema): %v", err)
		}
		played, err := exec.Command("asciinema", "play", "-s", "100", cast).CombinedOutput()
		if err != nil || !strings.Contains(string(played), "replay-me-42") {
			t.Fatalf("asciinema play: %v %q", err, played)
		}
		if out := gh(t, "audit", "verify", "--data-dir", s.dataDir, "--strict"); !strings.Contains(out, "0 with problems") {
			t.Fatalf("audit verify: %s", out)
		}
		// Tamper with the recording: the command's output is rewritten.
		path := filepath.Join(s.dataDir, "recordings", id+".jsonl")
		b, _ := os.ReadFile(path)
		if err := os.WriteFile(path, bytes.Replace(b, []byte("replay-me-42"), []byte("replay-me-43"), 1), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(gatehouseBin, "audit", "verify", path, "--data-dir", s.dataDir)
		out2, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out2), "ALTERED") {
			t.Fatalf("a tampered SSH recording: %v %s", err, out2)
		}
	})
	t.Run("a changed upstream host key is refused", func(t *testing.T) {
		before := s.revision(t)
		s.publish(t, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOEUTqBqeZQjtMndz1LphtYO5IcPCLaCN3hxN0yK1Sen")
		s.waitRevisionChange(t, before)
		_, stderr, code := s.client(t, "ops-1", "", "ssh", target, "uptime")
		if code == 0 || !strings.Contains(stderr, "is not the pinned one") {
			t.Fatalf("changed host key: exit %d %q", code, stderr)
		}
		before = s.revision(t)
		s.publish(t, s.up.HostKey)
		s.waitRevisionChange(t, before)
	})
	t.Run("a revoking bundle refuses the next connection", func(t *testing.T) {
		before := s.revision(t)
		s.publish(t, s.up.HostKey, `
policy "revoke" {
  resources  = ["bastion"]
  identities = ["dev-1"]
  rule "out" {
    effect = "deny"
    on     = ["connect"]
    reason = "dev-1 is off the bastion"
  }
}`)
		s.waitRevisionChange(t, before)
		_, stderr, code := s.client(t, "dev-1", "", "ssh", target, "uptime")
		if code == 0 || !strings.Contains(stderr, "dev-1 is off the bastion") {
			t.Fatalf("after revocation: exit %d %q", code, stderr)
		}
	})
	t.Run("the upstream credential appears nowhere", func(t *testing.T) {
		body := strings.Split(string(s.up.ClientKey), "\n")[2]
		if strings.Contains(s.logs.String(), body) {
			t.Error("the gateway log holds the upstream key")
		}
		files, _ := filepath.Glob(filepath.Join(s.dataDir, "recordings", "*.jsonl"))
		for _, f := range files {
			if b, _ := os.ReadFile(f); bytes.Contains(b, []byte(body)) {
				t.Errorf("%s holds the upstream key", f)
			}
		}
	})
}

// forwardAttempt runs ssh -N -L towards the upstream's port 22 and
// connects to the local end; it returns ssh's output once it has reported
// the refusal.
func (s *sshStack) forwardAttempt(t *testing.T, who, target, localPort string) (string, string, int) {
	t.Helper()
	type res struct {
		out, stderr string
		code        int
	}
	done := make(chan res, 1)
	go func() {
		out, stderr, code := s.client(t, who, "", "ssh", "-N", "-o", "ExitOnForwardFailure=no", "-L", localPort+":127.0.0.1:22", target)
		done <- res{out, stderr, code}
	}()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		c, err := net.Dial("tcp", "127.0.0.1:"+localPort)
		if err != nil {
			continue
		}
		_, _ = bufio.NewReader(c).ReadString('\n') // closed by ssh once the gateway refuses
		c.Close()
		break
	}
	// ssh -N stays up: stop it (its process group, as setsid made it).
	time.Sleep(500 * time.Millisecond)
	_ = exec.Command("pkill", "-f", "--", "-L "+localPort+":127.0.0.1:22").Run()
	select {
	case r := <-done:
		return r.out, r.stderr, r.code
	case <-time.After(20 * time.Second):
		t.Fatal("ssh -L did not stop")
	}
	return "", "", 0
}

func (s *sshStack) approvals(t *testing.T, who string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(gatehouseBin, append([]string{"approvals"}, args...)...)
	cmd.Env = append(os.Environ(), "GATEHOUSE_ADDR=http://"+s.adminAddr, "GATEHOUSE_TOKEN="+s.hydra.Token(t, who, who+"-secret", []string{"gatehouse"}))
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// lastSession is the id of the newest sealed recording of who.
func (s *sshStack) lastSession(t *testing.T, who string) string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		out := gh(t, "sessions", "list", "--data-dir", s.dataDir, "--identity", who)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		last := lines[len(lines)-1]
		if f := strings.Fields(last); len(f) > 0 && f[len(f)-1] == "yes" && f[0] != "SESSION" {
			return f[0]
		}
	}
	t.Fatal("no sealed session")
	return ""
}
