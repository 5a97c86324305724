package devenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway"
	"github.com/gatehouse-dev/gatehouse/internal/sshd"
)

// DefaultSSHListen is where the gateway listens for SSH clients when the
// port is free; otherwise a random loopback port is used.
const DefaultSSHListen = "127.0.0.1:2222"

// SSHHost is an ssh_host the environment serves: a throwaway OpenSSH sshd
// whose host key the bundle pins, logged in to with a key made for the run.
type SSHHost struct {
	Name   string
	Server *sshd.Server
}

// setUpSSHHosts starts an sshd for each ssh_host of the policy and points
// the resource at it: its address, a login the key made for the run opens,
// the sshd's host key pinned, and the key as a file: reference only the
// gateway reads. Without sshd installed the hosts are skipped, with how to
// get it.
func (e *Env) setUpSSHHosts(step func(string, ...any)) error {
	if len(e.Model.SSHHosts) == 0 {
		return nil
	}
	if err := sshd.Available(); err != nil {
		for _, r := range e.Model.SSHHosts {
			e.Skipped = append(e.Skipped, fmt.Sprintf("ssh_host %q (%v)", r.Name, err))
		}
		return nil
	}
	secrets := filepath.Join(e.Dir, "secrets")
	if err := os.MkdirAll(secrets, 0o700); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	for i := range e.Model.SSHHosts {
		r := &e.Model.SSHHosts[i]
		start := time.Now()
		srv, err := sshd.Start()
		if err != nil {
			return fmt.Errorf("dev: ssh_host %q: %w", r.Name, err)
		}
		e.SSH = append(e.SSH, SSHHost{Name: r.Name, Server: srv})
		keyFile := filepath.Join(secrets, r.Name+".key")
		if err := os.WriteFile(keyFile, srv.ClientKey, 0o600); err != nil {
			return fmt.Errorf("dev: %w", err)
		}
		r.Address, r.User, r.HostKey = srv.Addr, srv.User, srv.HostKey
		r.PrivateKey, r.Password = "file:"+keyFile, ""
		step("ssh_host %q: a throwaway OpenSSH sshd on %s, logged in to as %s with a key made for this run, host key pinned (%s)",
			r.Name, srv.Addr, srv.User, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// mintSSHCaller writes a token for a caller the policy lets onto an SSH
// host: the first test that expects a connection to an ssh_host allowed
// says who that is (the quickstart's is an operator in dba).
func (e *Env) mintSSHCaller(groupsClaim map[string]string) error {
	for _, h := range e.SSH {
		for _, t := range e.Model.Tests {
			if t.Resource != h.Name || t.Expect != bundle.EffectAllow || !strings.Contains(t.Request, `"connect"`) {
				continue
			}
			c := Caller{Identity: t.Identity, Provider: t.Provider, Subject: t.Subject, Claims: map[string]any{}}
			if c.Identity != "" {
				if known, ok := e.Caller(c.Identity); ok {
					e.SSHCaller = &known
					return nil
				}
				continue
			}
			if len(t.Groups) > 0 {
				c.Claims[groupsClaim[c.Provider]] = t.Groups
			}
			c.Identity = "subject " + c.Subject
			tok, err := e.Issuer.Mint(c.Provider, c.Subject, c.Claims, TokenTTL)
			if err != nil {
				return fmt.Errorf("dev: token for %s: %w", c.Identity, err)
			}
			c.TokenFile = filepath.Join(e.Dir, "tokens", "ssh-"+c.Subject)
			if err := os.WriteFile(c.TokenFile, []byte(tok), 0o600); err != nil {
				return fmt.Errorf("dev: %w", err)
			}
			e.SSHCaller = &c
			return nil
		}
	}
	return nil
}

// listenAddr picks a listener's address: want, or def when that port is
// free, or a random loopback port. flag names the option in errors.
func listenAddr(want, def, flag string) (string, error) {
	if want == "" {
		want = def
		if ln, err := net.Listen("tcp", want); err != nil {
			want = "127.0.0.1:0"
		} else {
			ln.Close()
		}
	}
	if host, _, err := net.SplitHostPort(want); err != nil || !isLoopback(host) {
		return "", fmt.Errorf("dev: %s %q: the development gateway only listens on loopback", flag, want)
	}
	return want, nil
}

// writeKnownHosts pins the gateway's own host key for the ssh lines the
// environment prints and runs.
func (e *Env) writeKnownHosts() error {
	addr := e.Gateway.Addr("ssh")
	if addr == "" {
		return nil
	}
	pub, err := os.ReadFile(gateway.SSHHostKeyPath(e.DataDir) + ".pub")
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	host, port, _ := net.SplitHostPort(addr)
	e.KnownHosts = filepath.Join(e.Dir, "known_hosts")
	return os.WriteFile(e.KnownHosts, []byte(fmt.Sprintf("[%s]:%s %s", host, port, pub)), 0o644)
}

// SSHArgs are the ssh options for a host through the gateway: the
// gateway's pinned host key, token authentication, no agent or keys.
func (e *Env) SSHArgs(host string) []string {
	addr := e.Gateway.Addr("ssh")
	h, port, _ := net.SplitHostPort(addr)
	return []string{"-F", "/dev/null", "-p", port, "-o", "UserKnownHostsFile=" + e.KnownHosts, "-o", "StrictHostKeyChecking=yes",
		"-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=keyboard-interactive,password",
		"-o", "NumberOfPasswordPrompts=1", host + "@" + h}
}

// SSHStep is one ssh command of the demo and what must come of it.
type SSHStep struct {
	Says string
	// Args follow the host (a command, or ssh options such as -W that
	// come before it when Options is set).
	Args    []string
	Options []string
	// Denied is a substring of what ssh must print on stderr for a
	// refusal; empty means the command must succeed.
	Denied string
	Want   string
}

// QuickstartSSH is the SSH part of the demo on the embedded quickstart.
var QuickstartSSH = []SSHStep{
	{Says: "A diagnostic the bastion-ops policy allows runs on the host, with a key only the gateway holds.", Args: []string{"uptime"}, Want: "load average"},
	{Says: "A destructive command is denied by rule before it reaches the host.", Args: []string{"rm", "-rf", "./build"}, Denied: "bastion-ops/no-destructive"},
	{Says: "Port forwarding through the bastion is denied by rule (ssh -W opens a forward at once).", Options: []string{"-W", "127.0.0.1:5432"}, Denied: "port forwarding through the bastion is not allowed"},
}

// RunSSHScript runs the SSH demo with the real ssh client through the
// gateway, as the SSH caller; askpass is a gatehouse-askpass link (SSH_ASKPASS
// names a program) that answers the token prompts from the caller's token
// file.
func (e *Env) RunSSHScript(ctx context.Context, host string, steps []SSHStep, askpass string, w io.Writer, color bool) error {
	paint := func(code, s string) string { return Paint(color, code, s) }
	if e.SSHCaller == nil {
		return errors.New("dev: no caller the policy lets onto the SSH host (no test expects a connect to be allowed)")
	}
	sshBin, err := exec.LookPath("ssh")
	if err != nil {
		return fmt.Errorf("dev: ssh is needed for the scripted SSH session: %w (apt package openssh-client)", err)
	}
	var problems []string
	for _, st := range steps {
		base := e.SSHArgs(host)
		target := base[len(base)-1]
		args := append(append(append(append([]string{}, base[:len(base)-1]...), st.Options...), target), st.Args...)
		shown := append(append(append([]string{"ssh", "-p", portOf(e.Gateway.Addr("ssh"))}, st.Options...), target), st.Args...)
		fmt.Fprintf(w, "\n   %s\n   %s$ %s\n", paint("2", "# "+st.Says), e.SSHCaller.Identity, strings.Join(shown, " "))
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		cmd := exec.CommandContext(cctx, "setsid", append([]string{"-w", sshBin}, args...)...)
		cmd.Env = append(os.Environ(), "SSH_ASKPASS="+askpass, "SSH_ASKPASS_REQUIRE=force", "DISPLAY=none", "GATEHOUSE_TOKEN_FILE="+e.SSHCaller.TokenFile)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr, cmd.Stdin = &out, &errb, strings.NewReader("")
		err := cmd.Run()
		cancel()
		text := strings.TrimRight(out.String()+errb.String(), "\n")
		for _, line := range strings.Split(strings.ReplaceAll(text, "\r", ""), "\n") {
			if strings.HasPrefix(line, "Gatehouse: authenticate") {
				continue // the keyboard-interactive instruction
			}
			fmt.Fprintf(w, "   %s\n", line)
		}
		switch {
		case st.Denied == "" && err != nil:
			problems = append(problems, fmt.Sprintf("%v: %v", st.Args, err))
		case st.Denied == "" && !strings.Contains(out.String(), st.Want):
			problems = append(problems, fmt.Sprintf("%v: no %q in the output", st.Args, st.Want))
		case st.Denied != "" && !strings.Contains(errb.String(), st.Denied):
			problems = append(problems, fmt.Sprintf("%v %v: ssh did not report %q", st.Options, st.Args, st.Denied))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("the SSH session did not go as scripted: %s", strings.Join(problems, "; "))
	}
	return nil
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
