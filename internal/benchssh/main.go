// Command benchssh measures what the SSH gateway costs next to a direct
// connection to the same OpenSSH sshd, in one run on one machine:
//
//   - scp of a file (256 MiB by default) to the host, with the real scp,
//     direct and through the gateway: MB/s and the ratio;
//   - new sessions per second: connect, authenticate, run `true`, close,
//     sequentially and 8 at a time (x/crypto/ssh clients);
//   - the gateway's memory per idle authenticated session, and per idle
//     shell: the gateway runs in this process and the idle clients in a
//     child process, so the growth of this process's RSS is the gateway's.
//
// `make bench` runs it. A benchmark, not a test: nothing fails on a number.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gatehouse-dev/gatehouse/devenv"
	"github.com/gatehouse-dev/gatehouse/gateway"
	"github.com/gatehouse-dev/gatehouse/gateway/session"
	"github.com/gatehouse-dev/gatehouse/internal/benchmem"
)

const policy = `
identity_provider "corp" {
  issuer    = "https://id.example.com"
  audiences = ["gatehouse"]
}

identity "bench" {
  provider = "corp"
  subject  = "bench"
}

ssh_host "bench-host" {
  address     = "bench-host.internal:22"
  user        = "bench"
  host_key    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOEUTqBqeZQjtMndz1LphtYO5IcPCLaCN3hxN0yK1Sen"
  private_key = "env:BENCH_KEY"
}

policy "bench" {
  resources  = ["bench-host"]
  identities = ["bench"]

  rule "connect" {
    effect = "allow"
    on     = ["connect"]
    reason = "the benchmark may connect"
  }

  rule "no-destructive" {
    effect = "deny"
    on     = ["exec"]
    when   = "!request.simple || request.argv[0] in ['rm', 'dd', 'shutdown']"
    reason = "no destructive commands"
  }

  rule "work" {
    effect = "allow"
    on     = ["exec", "shell", "subsystem", "pty"]
    reason = "the benchmark's commands, shells and file transfers"
  }
}

test "bench connects" {
  identity = "bench"
  resource = "bench-host"
  request  = { kind = "connect" }
  expect   = "allow"
}
`

func main() {
	hold := flag.Int("hold", 0, "(child) hold this many idle sessions to ADDR until stdin closes")
	shells := flag.Bool("shells", false, "(child) open an idle shell in each held session")
	addr := flag.String("addr", "", "(child) the gateway's SSH address")
	tokenFile := flag.String("token-file", "", "(child) the token")
	sizeMiB := flag.Int("size", 256, "MiB copied with scp")
	sessions := flag.Int("sessions", 20, "sessions opened one at a time (twice as many 8 at a time)")
	idle := flag.Int("idle", 100, "idle sessions for the memory measurement")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the scp runs (the gateway's side) to this file")
	flag.Parse()
	if *hold > 0 {
		if err := holdSessions(*addr, *tokenFile, *hold, *shells); err != nil {
			fmt.Fprintln(os.Stderr, "benchssh child:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*sizeMiB, *sessions, *idle, *cpuprofile); err != nil {
		fmt.Fprintln(os.Stderr, "benchssh:", err)
		os.Exit(1)
	}
}

type setup struct {
	env        *devenv.Env
	work       string
	direct     string // sshd's address
	user       string
	keyFile    string
	directKH   string // known_hosts pinning sshd
	gateway    string
	gatewayKH  string
	askpass    string
	tokenFile  string
	hostName   string
	clientKey  gossh.Signer
	hostPinned gossh.PublicKey
}

func run(sizeMiB, sessions, idle int, cpuprofile string) error {
	ctx := context.Background()
	work, err := os.MkdirTemp("", "gatehouse-benchssh-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	policyDir := filepath.Join(work, "policy")
	if err := os.MkdirAll(policyDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(policyDir, "policy.hcl"), []byte(policy), 0o644); err != nil {
		return err
	}
	step("starting sshd, the development issuer and the gateway (devenv)")
	// The idle-memory measurement holds more sessions of one identity
	// than the default per-identity limit (50) admits.
	env, err := devenv.Start(ctx, devenv.Options{PolicyDir: policyDir, SSHListen: "127.0.0.1:0", Progress: os.Stdout,
		Configure: func(c *gateway.Config) {
			c.SSH.Limits.MaxSessionsPerIdentity = max(2*idle, session.DefaultMaxSessionsPerIdentity)
		}})
	if err != nil {
		return err
	}
	defer env.Close()
	if len(env.SSH) == 0 || env.SSHCaller == nil {
		return fmt.Errorf("the environment serves no SSH host (is openssh-server installed?): %v", env.Skipped)
	}
	s, err := newSetup(env, work)
	if err != nil {
		return err
	}
	var report bytes.Buffer
	fmt.Fprintf(&report, "SSH gateway benchmark, %d CPUs, %s\n\n", runtime.NumCPU(), time.Now().UTC().Format("2006-01-02"))
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	err = s.scp(&report, sizeMiB)
	if cpuprofile != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return err
	}
	if err := s.newSessions(&report, sessions); err != nil {
		return err
	}
	if err := s.idleMemory(&report, idle); err != nil {
		return err
	}
	fmt.Print("\n" + report.String())
	return nil
}

func newSetup(env *devenv.Env, work string) (*setup, error) {
	h := env.SSH[0]
	s := &setup{env: env, work: work, direct: h.Server.Addr, user: h.Server.User, keyFile: h.Server.ClientKeyPath,
		gateway: env.Gateway.Addr("ssh"), gatewayKH: env.KnownHosts, tokenFile: env.SSHCaller.TokenFile, hostName: h.Name}
	host, port, _ := net.SplitHostPort(s.direct)
	s.directKH = filepath.Join(work, "direct_known_hosts")
	if err := os.WriteFile(s.directKH, []byte(fmt.Sprintf("[%s]:%s %s\n", host, port, h.Server.HostKey)), 0o644); err != nil {
		return nil, err
	}
	// The development issuer's tokens (ES256) fit OpenSSH's password
	// prompt: a plain askpass script gives it.
	s.askpass = filepath.Join(work, "askpass")
	if err := os.WriteFile(s.askpass, []byte("#!/bin/sh\ncat "+s.tokenFile+"\n"), 0o700); err != nil {
		return nil, err
	}
	var err error
	if s.clientKey, err = gossh.ParsePrivateKey(h.Server.ClientKey); err != nil {
		return nil, err
	}
	if s.hostPinned, _, _, _, err = gossh.ParseAuthorizedKey([]byte(h.Server.HostKey)); err != nil {
		return nil, err
	}
	return s, nil
}

// scp copies a random file to the host with the real scp, three times per
// path, alternating, and reports the median throughput.
func (s *setup) scp(report io.Writer, sizeMiB int) error {
	step("scp of %d MiB: direct and through the gateway, 3 runs each", sizeMiB)
	src := filepath.Join(s.work, "payload")
	f, err := os.Create(src)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.Reader, int64(sizeMiB)<<20); err != nil {
		return err
	}
	f.Close()
	dst := filepath.Join(os.TempDir(), fmt.Sprintf("gatehouse-benchssh-%d", time.Now().UnixNano()))
	defer os.Remove(dst)
	var direct, gw []float64
	for range 3 {
		d, err := s.scpOnce(src, dst, false)
		if err != nil {
			return fmt.Errorf("scp direct: %w", err)
		}
		g, err := s.scpOnce(src, dst, true)
		if err != nil {
			return fmt.Errorf("scp through the gateway: %w", err)
		}
		direct = append(direct, float64(sizeMiB)/d.Seconds())
		gw = append(gw, float64(sizeMiB)/g.Seconds())
		fmt.Printf("    direct %.0f MiB/s, gateway %.0f MiB/s\n", direct[len(direct)-1], gw[len(gw)-1])
	}
	md, mg := median(direct), median(gw)
	fmt.Fprintf(report, "| scp %d MiB (median of 3) | MiB/s |\n|---|---|\n| direct | %.0f |\n| gateway | %.0f |\n| gateway / direct | **%.2f** |\n\n", sizeMiB, md, mg, mg/md)
	return nil
}

func (s *setup) scpOnce(src, dst string, viaGateway bool) (time.Duration, error) {
	var args []string
	env := os.Environ()
	if viaGateway {
		_, port, _ := net.SplitHostPort(s.gateway)
		args = []string{"-q", "-F", "/dev/null", "-P", port, "-o", "UserKnownHostsFile=" + s.gatewayKH, "-o", "StrictHostKeyChecking=yes",
			"-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password", src, s.hostName + "@127.0.0.1:" + dst}
		env = append(env, "SSH_ASKPASS="+s.askpass, "SSH_ASKPASS_REQUIRE=force", "DISPLAY=none")
	} else {
		_, port, _ := net.SplitHostPort(s.direct)
		args = []string{"-q", "-F", "/dev/null", "-P", port, "-i", s.keyFile, "-o", "IdentitiesOnly=yes", "-o", "UserKnownHostsFile=" + s.directKH,
			"-o", "StrictHostKeyChecking=yes", "-o", "PreferredAuthentications=publickey", src, s.user + "@127.0.0.1:" + dst}
	}
	cmd := exec.Command("setsid", append([]string{"-w", "scp"}, args...)...)
	cmd.Env = env
	var errb bytes.Buffer
	cmd.Stderr = &errb
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("%v: %s", err, errb.String())
	}
	return time.Since(start), nil
}

// newSessions measures sessions per second: connect, authenticate, run
// `true`, close.
func (s *setup) newSessions(report io.Writer, n int) error {
	step("new sessions: %d sequential and %d with 8 in parallel, per path", n, 2*n)
	token, err := os.ReadFile(s.tokenFile)
	if err != nil {
		return err
	}
	direct := &gossh.ClientConfig{User: s.user, Auth: []gossh.AuthMethod{gossh.PublicKeys(s.clientKey)}, HostKeyCallback: gossh.FixedHostKey(s.hostPinned)}
	gpub, err := gatewayHostKey(s.gatewayKH)
	if err != nil {
		return err
	}
	gw := &gossh.ClientConfig{User: s.hostName, Auth: []gossh.AuthMethod{gossh.Password(strings.TrimSpace(string(token)))}, HostKeyCallback: gossh.FixedHostKey(gpub)}
	fmt.Fprintf(report, "| new sessions (connect, authenticate, exec `true`) | direct /s | gateway /s | ratio |\n|---|---|---|---|\n")
	for _, par := range []int{1, 8} {
		count := n
		if par > 1 {
			count = 2 * n
		}
		dr, err := sessionRate(s.direct, direct, count, par)
		if err != nil {
			return fmt.Errorf("direct: %w", err)
		}
		gr, err := sessionRate(s.gateway, gw, count, par)
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		fmt.Fprintf(report, "| %d at a time | %.0f | %.0f | %.2f |\n", par, dr, gr, gr/dr)
	}
	fmt.Fprintln(report)
	return nil
}

func sessionRate(addr string, cfg *gossh.ClientConfig, n, par int) (float64, error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	jobs := make(chan struct{}, n)
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	start := time.Now()
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				if err := oneSession(addr, cfg); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds(), first
}

func oneSession(addr string, cfg *gossh.ClientConfig) error {
	c, err := gossh.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	sess, err := c.NewSession()
	if err != nil {
		return err
	}
	defer sess.Close()
	return sess.Run("true")
}

// idleMemory has a child process hold idle sessions and measures how much
// this process (the gateway) grows.
func (s *setup) idleMemory(report io.Writer, n int) error {
	fmt.Fprintf(report, "| %d idle sessions held by another process | gateway RSS growth | per session |\n|---|---|---|\n", n)
	for _, shells := range []bool{false, true} {
		what := "authenticated, no channel"
		if shells {
			what = "with an idle shell (upstream connected)"
		}
		step("memory: %d idle sessions, %s", n, what)
		growth, err := benchmem.Growth("-hold", strconv.Itoa(n), "-addr", s.gateway, "-token-file", s.tokenFile, fmt.Sprintf("-shells=%v", shells))
		if err != nil {
			return err
		}
		fmt.Fprintf(report, "| %s | %.1f MiB | %.0f KiB |\n", what, float64(growth)/(1<<20), float64(growth)/float64(n)/1024)
		// Let the sessions end and their memory return before the next.
		time.Sleep(time.Second)
	}
	fmt.Fprintln(report)
	return nil
}

// holdSessions is the child: it opens n sessions (and shells), says
// "ready", and keeps them until stdin closes.
func holdSessions(addr, tokenFile string, n int, shells bool) error {
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return err
	}
	cfg := &gossh.ClientConfig{User: "bench-host", Auth: []gossh.AuthMethod{gossh.Password(strings.TrimSpace(string(token)))},
		HostKeyCallback: gossh.InsecureIgnoreHostKey()}
	var clients []*gossh.Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	return benchmem.Hold(func() error {
		for range n {
			c, err := gossh.Dial("tcp", addr, cfg)
			if err != nil {
				return err
			}
			clients = append(clients, c)
			if shells {
				sess, err := c.NewSession()
				if err != nil {
					return err
				}
				if _, err := sess.StdinPipe(); err != nil {
					return err
				}
				if err := sess.Shell(); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func gatewayHostKey(knownHosts string) (gossh.PublicKey, error) {
	b, err := os.ReadFile(knownHosts)
	if err != nil {
		return nil, err
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return nil, fmt.Errorf("%s: no key", knownHosts)
	}
	k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(strings.Join(f[1:], " ")))
	return k, err
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }
