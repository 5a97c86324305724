// Package sshd runs a private, throwaway OpenSSH server from the system's
// sshd binary: its own host key, its own authorized key for one login,
// listening on 127.0.0.1 at a random port, in a temp dir. `gatehouse dev`,
// `make bench` and the tests' helper (internal/sshdtest) start their SSH
// hosts through it. Nothing stands in for OpenSSH: what the gateway talks to
// is the real server.
//
// The login is the calling process's own user (root in CI), allowed by key
// only; WithPasswordUser adds a system user with a password (root only) for
// tests of password credentials. sshd runs as a direct child; if the
// calling process dies without Close, the kernel sends it SIGTERM through
// the parent-death signal.
package sshd

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// Binary is where Debian's openssh-server puts sshd.
const Binary = "/usr/sbin/sshd"

// Server is a running sshd.
type Server struct {
	// Addr is host:port on 127.0.0.1.
	Addr string
	// User is the login its ClientKey is authorized for.
	User string
	// HostKey is the server's host public key in authorized_keys format
	// (what a bundle's host_key pins).
	HostKey string
	// ClientKey is the authorized private key, OpenSSH PEM; ClientKeyPath
	// is a 0600 file holding it.
	ClientKey     []byte
	ClientKeyPath string
	// PasswordUser and Password are the password login (WithPasswordUser).
	PasswordUser, Password string

	dir       string
	cmd       *exec.Cmd
	done      chan struct{}
	logFile   string
	closeOnce sync.Once
}

type config struct {
	passwordUser string
	extra        []string
}

// Option configures a Server.
type Option func(*config)

// WithPasswordUser also allows password logins as name, a system user
// created (useradd) when missing and given a fresh random password. It
// needs root.
func WithPasswordUser(name string) Option { return func(c *config) { c.passwordUser = name } }

// WithConfig adds sshd_config lines.
func WithConfig(lines ...string) Option {
	return func(c *config) { c.extra = append(c.extra, lines...) }
}

// Available says whether sshd can be run here, and how to get it when not.
func Available() error {
	if _, err := os.Stat(Binary); err != nil {
		return fmt.Errorf("OpenSSH's sshd is not installed (%s): install the openssh-server package (apt-get install openssh-server)", Binary)
	}
	return nil
}

// Start runs sshd in a temp dir on a random loopback port and waits until
// it answers. Close stops it and removes the dir.
func Start(opts ...Option) (_ *Server, err error) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	if err := Available(); err != nil {
		return nil, err
	}
	me, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("sshd: %w", err)
	}
	dir, err := os.MkdirTemp("", "gatehouse-sshd-")
	if err != nil {
		return nil, fmt.Errorf("sshd: %w", err)
	}
	s := &Server{dir: dir, User: me.Username, logFile: filepath.Join(dir, "sshd.log"), done: make(chan struct{})}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	if err := s.writeKeys(); err != nil {
		return nil, err
	}
	allow := []string{me.Username}
	if cfg.passwordUser != "" {
		if err := s.passwordUser(cfg.passwordUser); err != nil {
			return nil, err
		}
		allow = append(allow, cfg.passwordUser)
	}
	if os.Geteuid() == 0 {
		// The privilege-separation directory sshd insists on.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, fmt.Errorf("sshd: %w", err)
		}
	}
	for attempt := 0; ; attempt++ {
		err = s.start(cfg, allow)
		if err == nil || attempt == 2 {
			return s, err
		}
	}
}

// writeKeys makes the host key and the client key, and authorizes the
// client key.
func (s *Server) writeKeys() error {
	_, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	hostPEM, err := gossh.MarshalPrivateKey(hostPriv, "gatehouse test sshd")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(s.dir, "host_ed25519"), pem.EncodeToMemory(hostPEM), 0o600); err != nil {
		return err
	}
	hostPub, err := gossh.NewPublicKey(hostPriv.Public())
	if err != nil {
		return err
	}
	s.HostKey = strings.TrimSpace(string(gossh.MarshalAuthorizedKey(hostPub)))
	_, clientPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	clientPEM, err := gossh.MarshalPrivateKey(clientPriv, "gatehouse upstream key")
	if err != nil {
		return err
	}
	s.ClientKey = pem.EncodeToMemory(clientPEM)
	s.ClientKeyPath = filepath.Join(s.dir, "client_ed25519")
	if err := os.WriteFile(s.ClientKeyPath, s.ClientKey, 0o600); err != nil {
		return err
	}
	clientPub, err := gossh.NewPublicKey(clientPriv.Public())
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.dir, "authorized_keys"), gossh.MarshalAuthorizedKey(clientPub), 0o600)
}

// passwordUser makes sure a system user exists and sets a fresh password.
func (s *Server) passwordUser(name string) error {
	if os.Geteuid() != 0 {
		return errors.New("sshd: a password user needs root (useradd, chpasswd)")
	}
	if _, err := user.Lookup(name); err != nil {
		if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", name).CombinedOutput(); err != nil {
			return fmt.Errorf("sshd: useradd %s: %v: %s", name, err, out)
		}
	}
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	s.PasswordUser, s.Password = name, hex.EncodeToString(b)
	cmd := exec.Command("chpasswd")
	cmd.Stdin = strings.NewReader(name + ":" + s.Password + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sshd: chpasswd: %v: %s", err, out)
	}
	return nil
}

func (s *Server) start(cfg config, allow []string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	lines := []string{
		"ListenAddress " + addr,
		"HostKey " + filepath.Join(s.dir, "host_ed25519"),
		"PidFile " + filepath.Join(s.dir, "sshd.pid"),
		"AuthorizedKeysFile " + filepath.Join(s.dir, "authorized_keys"),
		"PubkeyAuthentication yes",
		"PasswordAuthentication " + yesNo(cfg.passwordUser != ""),
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"StrictModes no",
		"PermitRootLogin prohibit-password",
		"AllowUsers " + strings.Join(allow, " "),
		"Subsystem sftp internal-sftp",
		"AllowTcpForwarding yes",
		"AllowAgentForwarding yes",
		"X11Forwarding no",
		"AcceptEnv LANG LC_* GATEHOUSE_*",
		"PrintMotd no",
		"LogLevel ERROR",
	}
	lines = append(lines, cfg.extra...)
	conf := filepath.Join(s.dir, "sshd_config")
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	logf, err := os.Create(s.logFile)
	if err != nil {
		return err
	}
	cmd := exec.Command(Binary, "-D", "-e", "-f", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("sshd: %w", err)
	}
	s.cmd, s.Addr, s.done = cmd, addr, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(s.done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("sshd exited at start: %s", s.Log())
		default:
		}
		if banner(addr) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.stop()
	return fmt.Errorf("sshd did not answer on %s within 10s: %s", addr, s.Log())
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// banner reports whether an SSH server answers on addr.
func banner(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "SSH-2.0-")
}

// Log is what sshd wrote to its log so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.logFile)
	return strings.TrimSpace(string(b))
}

func (s *Server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Close stops sshd and removes its dir.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.stop()
		os.RemoveAll(s.dir)
	})
	return nil
}
