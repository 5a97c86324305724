package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/gatehouse-dev/gatehouse/devenv"
	"github.com/gatehouse-dev/gatehouse/internal/pgcluster"
)

type bouncer struct {
	addr string
	cmd  *exec.Cmd
	done chan struct{}
}

func (b *bouncer) stop() {
	_ = b.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
	}
}

// startPgbouncer runs pgbouncer in the foreground (as the postgres user
// when we are root: it refuses root), in transaction pooling, with TLS to
// its clients and to PostgreSQL.
func startPgbouncer(work string, pg *pgcluster.Server, password string, env *devenv.Env) (*bouncer, error) {
	dir := filepath.Join(work, "pgbouncer")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	cred, err := pgcluster.ServerCredential()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cert, key := filepath.Join(env.Dir, "tls.crt"), filepath.Join(env.Dir, "tls.key")
	files := map[string]string{
		"pgbouncer.ini": fmt.Sprintf(`[databases]
bench = host=%s port=%d dbname=bench user=bench password=%s
bench_session = host=%[1]s port=%[2]d dbname=bench user=bench password=%[3]s pool_mode=session

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir = %s
auth_type = trust
auth_file = %s/userlist.txt
pool_mode = transaction
max_client_conn = 200
default_pool_size = 32
client_tls_sslmode = require
client_tls_cert_file = %s/tls.crt
client_tls_key_file = %s/tls.key
server_tls_sslmode = verify-full
server_tls_ca_file = %s/ca.pem
logfile = %s/pgbouncer.log
ignore_startup_parameters = extra_float_digits
`, pg.Host(), pg.Port(), password, port, dir, dir, dir, dir, dir, dir),
		"userlist.txt": `"bench" ""` + "\n",
	}
	for name, src := range map[string]string{"tls.crt": cert, "tls.key": key, "ca.pem": env.CAFile} {
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		files[name] = string(b)
	}
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			return nil, err
		}
		if cred != nil {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				return nil, err
			}
		}
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
		// The postgres user must reach dir through work, and env.Dir.
		_ = os.Chmod(work, 0o711)
	}
	cmd := exec.Command("pgbouncer", filepath.Join(dir, "pgbouncer.ini"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGTERM}
	var logb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logb, &logb
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("pgbouncer: %w", err)
	}
	b := &bouncer{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(b.done) }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		select {
		case <-b.done:
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			return nil, fmt.Errorf("pgbouncer exited: %s%s", logb.String(), log)
		default:
		}
		if c, err := net.Dial("tcp", b.addr); err == nil {
			c.Close()
			return b, nil
		}
		if time.Now().After(deadline) {
			b.stop()
			return nil, fmt.Errorf("pgbouncer did not listen on %s within 10s", b.addr)
		}
	}
}
