// Package pgcluster runs a private, throwaway PostgreSQL cluster from the
// system's server binaries: initdb in a temp dir, the postmaster on
// 127.0.0.1 at a random port, SCRAM-SHA-256 over TCP. `gatehouse dev`,
// `make bench` and the test helper (internal/pgtest) all start their
// databases through it.
//
// The postmaster runs as a direct child of the calling process; if that
// process dies without calling Close (a SIGKILL), the kernel sends the
// postmaster SIGQUIT through the parent-death signal, so no server outlives
// its owner.
//
// When running as root, PostgreSQL refuses to start, so initdb and postgres
// run as the `postgres` system user (created by the Debian package).
package pgcluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// helperAppName marks the connections the package opens itself (Connect,
// Exec, Conns, CreateRole, CreateDatabase). Conns does not count them and
// they do not appear in the statement log, so Statements shows only what
// other clients (the code under test, a proxy) sent.
const helperAppName = "gatehouse-pgcluster"

// Superuser is the name of the cluster's superuser role.
const Superuser = "postgres"

const (
	startTimeout = 30 * time.Second
	stopTimeout  = 10 * time.Second
	opTimeout    = time.Minute
	// startAttempts bounds the retries when another process grabs the port
	// between picking it and the postmaster binding it.
	startAttempts = 3
)

// Option configures a Server before it starts.
type Option func(*config)

type setting struct{ key, value string }

type config struct {
	tlsCert, tlsKey []byte
	clientCA        []byte
	hba, ident      []string
	settings        []setting
	statementLog    bool
}

// WithClientCA makes the server trust client certificates signed by this
// CA (ssl_ca_file), for cert authentication (WithHBA). Needs WithTLS.
func WithClientCA(caPEM []byte) Option {
	return func(c *config) { c.clientCA = bytes.Clone(caPEM) }
}

// WithHBA puts pg_hba.conf lines before the default ones (the first line
// that matches a connection decides), such as
// "hostssl all all 127.0.0.1/32 cert map=gw".
func WithHBA(lines ...string) Option {
	return func(c *config) { c.hba = append(c.hba, lines...) }
}

// WithIdent adds pg_ident.conf lines ("MAP SYSTEM-USER PG-ROLE").
func WithIdent(lines ...string) Option {
	return func(c *config) { c.ident = append(c.ident, lines...) }
}

// WithTLS enables ssl=on with the given PEM certificate (chain) and private
// key. Clients may still connect without TLS; ConnString then asks for
// sslmode=require.
func WithTLS(certPEM, keyPEM []byte) Option {
	return func(c *config) {
		c.tlsCert = bytes.Clone(certPEM)
		c.tlsKey = bytes.Clone(keyPEM)
	}
}

// WithConfig adds a postgresql.conf setting. Settings are written after the
// helper's defaults, so they override them (fsync, for example); the listen
// address, port and socket directory are fixed on the command line and cannot
// be overridden. The value is quoted for postgresql.conf by the helper.
func WithConfig(key, value string) Option {
	return func(c *config) { c.settings = append(c.settings, setting{key, value}) }
}

// WithStatementLog sets log_statement=all, so that QueryLog and Statements
// can show which statements reached the server.
func WithStatementLog() Option {
	return func(c *config) { c.statementLog = true }
}

// Server is a running PostgreSQL cluster.
type Server struct {
	dir          string // temp dir: data/, sockets, pwfile, log
	dataDir      string
	logFile      string
	port         int
	password     string
	tls          bool
	statementLog bool

	cmd       *exec.Cmd
	done      chan struct{} // closed when the postmaster has exited
	err       error         // the postmaster's exit status; read after done
	closeOnce sync.Once
}

// Start initialises a fresh cluster in a temp dir, starts it on 127.0.0.1 at
// a random free port and waits until it accepts connections. Close stops it
// and removes the temp dir. When the PostgreSQL server binaries are missing,
// the error names the package that provides them.
func Start(opts ...Option) (_ *Server, err error) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}

	bin, err := FindBinDir()
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL server binaries not found: %w; install the apt package postgresql-15 (apt-get install postgresql-15)", err)
	}
	cred, err := ServerCredential()
	if err != nil {
		return nil, err
	}

	// Not a test's TempDir: that lives inside a 0700 root-owned parent that
	// the postgres user could not enter.
	dir, err := os.MkdirTemp("", "gatehouse-pg-")
	if err != nil {
		return nil, fmt.Errorf("create temp dir: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()

	s := &Server{
		dir:          dir,
		dataDir:      filepath.Join(dir, "data"),
		logFile:      filepath.Join(dir, "postgresql.log"),
		password:     rand.Text(), // 26 base32 characters, 128 bits
		tls:          cfg.tlsCert != nil,
		statementLog: cfg.statementLog,
	}
	if err := s.chown(cred, dir); err != nil {
		return nil, err
	}
	if err := s.initdb(bin, cred); err != nil {
		return nil, err
	}
	if err := s.writeConfig(cred, &cfg); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		err := s.start(bin, cred)
		if err == nil {
			return s, nil
		}
		if attempt < startAttempts && errors.Is(err, errPortTaken) {
			continue
		}
		return nil, fmt.Errorf("%w\n%s", err, s.LogTail())
	}
}

// Close stops the server (an immediate shutdown: the data is thrown away)
// and removes its temp dir. It is safe to call more than once.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if stopErr := s.stop(); stopErr != nil {
			err = fmt.Errorf("%w\n%s", stopErr, s.LogTail())
		}
		if rmErr := os.RemoveAll(s.dir); rmErr != nil && err == nil {
			err = fmt.Errorf("remove %s: %w", s.dir, rmErr)
		}
	})
	return err
}

// Dir returns the cluster's temp dir (data/, the log, the Unix socket).
func (s *Server) Dir() string { return s.dir }

// Addr returns "127.0.0.1:PORT".
func (s *Server) Addr() string { return net.JoinHostPort(s.Host(), strconv.Itoa(s.port)) }

// Host returns the address the server listens on, always "127.0.0.1".
func (s *Server) Host() string { return "127.0.0.1" }

// Port returns the TCP port the server listens on.
func (s *Server) Port() int { return s.port }

// SuperuserPassword returns the generated password of the postgres role.
func (s *Server) SuperuserPassword() string { return s.password }

// LogFile returns the path of the server log (the postmaster's stderr).
// It is removed with the temp dir by Close.
func (s *Server) LogFile() string { return s.logFile }

// ConnString returns a postgres:// URL for user on db over TCP. It asks for
// sslmode=require when the server has TLS, and sslmode=disable otherwise.
func (s *Server) ConnString(user, password, db string) string {
	u := url.URL{
		Scheme: "postgres",
		User:   url.UserPassword(user, password),
		Host:   s.Addr(),
		Path:   "/" + db,
	}
	q := url.Values{}
	if s.tls {
		q.Set("sslmode", "require")
	} else {
		q.Set("sslmode", "disable")
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// Connect opens a superuser connection to db over TCP. Its statements are
// not logged and Conns does not count it; the caller closes it.
func (s *Server) Connect(db string) (*pgx.Conn, error) { return s.connect(db) }

// Exec runs sql as the superuser on db. Arguments are passed as bind
// parameters, which utility statements (CREATE, ALTER, ...) do not accept;
// without arguments, sql may hold several statements.
func (s *Server) Exec(db, sql string, args ...any) error {
	if err := s.exec(db, sql, args...); err != nil {
		return fmt.Errorf("exec on %s: %w", db, err)
	}
	return nil
}

// CreateRole creates a LOGIN role whose password is stored as a
// SCRAM-SHA-256 verifier, so logging in as it exercises SCRAM.
func (s *Server) CreateRole(name, password string) error {
	lit, err := quoteLiteral(password)
	if err != nil {
		return fmt.Errorf("create role %s: %w", name, err)
	}
	// password_encryption is per session: set it on the same connection.
	sql := "SET password_encryption = 'scram-sha-256'; CREATE ROLE " +
		pgx.Identifier{name}.Sanitize() + " LOGIN PASSWORD " + lit
	if err := s.exec("postgres", sql); err != nil {
		return fmt.Errorf("create role %s: %w", name, err)
	}
	return nil
}

// CreateDatabase creates db owned by owner.
func (s *Server) CreateDatabase(name, owner string) error {
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize() + " OWNER " + pgx.Identifier{owner}.Sanitize()
	if err := s.exec("postgres", sql); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// Conns returns how many client backends are connected to db, not counting
// the helper's own connections. A backend leaves pg_stat_activity a moment
// after its client disconnects, so a caller waiting for a pool to drain
// should poll.
func (s *Server) Conns(db string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	conn, err := s.connect("postgres")
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var n int
	err = conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = $1 AND backend_type = 'client backend'
		AND pid <> pg_backend_pid() AND application_name <> $2`, db, helperAppName).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count connections to %s: %w", db, err)
	}
	return n, nil
}

// Statement is one statement the server logged under WithStatementLog.
type Statement struct {
	User     string
	Database string
	// SQL is the statement text; for the extended protocol it is the text of
	// the executed prepared statement, with $n placeholders.
	SQL string
}

// Statements returns the statements that reached the server, in order, from
// every connection except the helper's own. The server must have been
// started WithStatementLog.
//
// PostgreSQL logs a statement before it runs it, so a statement appears here
// even when it then fails; a statement a proxy refused never does.
func (s *Server) Statements() ([]Statement, error) {
	if !s.statementLog {
		return nil, errors.New("Statements needs a server started WithStatementLog()")
	}
	data, err := os.ReadFile(s.logFile)
	if err != nil {
		return nil, fmt.Errorf("read server log: %w", err)
	}
	return parseStatements(data), nil
}

// FindBinDir returns the directory holding the PostgreSQL server binaries
// (initdb and postgres): the one pg_config reports, or else the highest
// version under /usr/lib/postgresql (the Debian layout, where pg_config may
// come from libpq-dev alone).
func FindBinDir() (string, error) {
	var tried []string
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := strings.TrimSpace(string(out))
		if hasServerBinaries(dir) {
			return dir, nil
		}
		tried = append(tried, dir)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, dir := range dirs {
		if hasServerBinaries(dir) {
			return dir, nil
		}
		tried = append(tried, dir)
	}
	tried = append(tried, "/usr/lib/postgresql/*/bin")
	return "", fmt.Errorf("no initdb and postgres in %s", strings.Join(tried, ", "))
}

func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// pgVersion reads the major version from /usr/lib/postgresql/<v>/bin; a
// directory that is not a number sorts last.
func pgVersion(binDir string) float64 {
	v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	if err != nil {
		return -1
	}
	return v
}

// ServerCredential returns the user to run PostgreSQL's programs (and
// pgbouncer, which also refuses root) as: the postgres user when we are
// root, nil (ourselves) otherwise.
func ServerCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, PostgreSQL must run as the postgres user, which is missing (%w); install the apt package postgresql-15", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

func (s *Server) chown(cred *syscall.Credential, path string) error {
	if cred == nil {
		return nil
	}
	if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("chown %s to postgres: %w", path, err)
	}
	return nil
}

// writeFile writes a file the server user owns with mode 0600; PostgreSQL
// refuses a private key anyone else can read.
func (s *Server) writeFile(cred *syscall.Credential, path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return s.chown(cred, path)
}

func (s *Server) command(cred *syscall.Credential, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = s.dir
	// LC_ALL=C: initdb would otherwise pick up whatever locale the test
	// environment has, which may not exist on the machine.
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	return cmd
}

func (s *Server) initdb(bin string, cred *syscall.Credential) error {
	pwfile := filepath.Join(s.dir, "pwfile")
	if err := s.writeFile(cred, pwfile, []byte(s.password+"\n")); err != nil {
		return err
	}
	cmd := s.command(cred, filepath.Join(bin, "initdb"),
		"-D", s.dataDir,
		"-U", Superuser,
		"--pwfile="+pwfile,
		"--auth-host=scram-sha-256",
		"--auth-local=trust",
		"--encoding=UTF8",
		"--no-locale",
		"--no-sync",
		"--no-instructions",
	)
	out, err := cmd.CombinedOutput()
	_ = os.Remove(pwfile)
	if err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	return nil
}

func (s *Server) writeConfig(cred *syscall.Credential, cfg *config) error {
	settings := []setting{
		{"fsync", "off"},
		{"synchronous_commit", "off"},
		{"full_page_writes", "off"},
		{"password_encryption", "scram-sha-256"},
		{"log_destination", "stderr"},
		{"logging_collector", "off"},
		// User and database in every line, so Statements can attribute
		// each statement; %q leaves them out for non-session processes.
		{"log_line_prefix", "%m [%p] %q%u@%d "},
	}
	if cfg.statementLog {
		settings = append(settings, setting{"log_statement", "all"})
	}
	if cfg.tlsCert != nil {
		crt, key := filepath.Join(s.dir, "server.crt"), filepath.Join(s.dir, "server.key")
		if err := s.writeFile(cred, crt, cfg.tlsCert); err != nil {
			return err
		}
		if err := s.writeFile(cred, key, cfg.tlsKey); err != nil {
			return err
		}
		settings = append(settings, setting{"ssl", "on"}, setting{"ssl_cert_file", crt}, setting{"ssl_key_file", key})
		if cfg.clientCA != nil {
			ca := filepath.Join(s.dir, "root.crt")
			if err := s.writeFile(cred, ca, cfg.clientCA); err != nil {
				return err
			}
			settings = append(settings, setting{"ssl_ca_file", ca})
		}
	}
	if len(cfg.hba) > 0 {
		path := filepath.Join(s.dataDir, "pg_hba.conf")
		old, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read pg_hba.conf: %w", err)
		}
		if err := s.writeFile(cred, path, append([]byte(strings.Join(cfg.hba, "\n")+"\n"), old...)); err != nil {
			return err
		}
	}
	if len(cfg.ident) > 0 {
		if err := s.writeFile(cred, filepath.Join(s.dataDir, "pg_ident.conf"), []byte(strings.Join(cfg.ident, "\n")+"\n")); err != nil {
			return err
		}
	}
	settings = append(settings, cfg.settings...)

	var b strings.Builder
	b.WriteString("\n# gatehouse pgcluster\n")
	for _, st := range settings {
		lit, err := quoteLiteral(st.value)
		if err != nil {
			return fmt.Errorf("setting %s: %w", st.key, err)
		}
		fmt.Fprintf(&b, "%s = %s\n", st.key, lit)
	}
	f, err := os.OpenFile(filepath.Join(s.dataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open postgresql.conf: %w", err)
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return fmt.Errorf("write postgresql.conf: %w", err)
	}
	return f.Close()
}

var errPortTaken = errors.New("port already in use")

// start runs the postmaster in the foreground as our child and waits until
// postmaster.pid says it is ready. Running it directly rather than through
// pg_ctl (which daemonises) is what lets the parent-death signal reach it.
func (s *Server) start(bin string, cred *syscall.Credential) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	defer logf.Close() // the child holds its own descriptor
	logStart, _ := logf.Seek(0, io.SeekEnd)

	cmd := s.command(cred, filepath.Join(bin, "postgres"),
		"-D", s.dataDir,
		"-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+s.dir,
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	// SIGQUIT is an immediate shutdown: the postmaster takes its backends
	// down with it and releases shared memory.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	s.cmd, s.port, s.done = cmd, port, make(chan struct{})
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()

	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	for {
		select {
		case <-s.done:
			log, _ := os.ReadFile(s.logFile)
			if int64(len(log)) > logStart && bytes.Contains(log[logStart:], []byte("already in use")) {
				return errPortTaken
			}
			return fmt.Errorf("postgres exited during start-up: %v", s.err)
		case <-deadline.C:
			_ = s.stop()
			return fmt.Errorf("postgres not ready after %s", startTimeout)
		case <-tick.C:
			if s.ready() {
				return nil
			}
		}
	}
}

// ready reports whether postmaster.pid carries the "ready" status, which the
// postmaster writes once it accepts connections (this is what pg_ctl -w
// waits for).
func (s *Server) ready() bool {
	data, err := os.ReadFile(filepath.Join(s.dataDir, "postmaster.pid"))
	if err != nil {
		return false
	}
	lines := strings.Split(string(data), "\n")
	return len(lines) >= 8 && strings.TrimSpace(lines[0]) == strconv.Itoa(s.cmd.Process.Pid) &&
		strings.TrimSpace(lines[7]) == "ready"
}

// stop asks for an immediate shutdown and waits for the postmaster; the data
// directory is thrown away, so there is nothing a clean shutdown would save.
func (s *Server) stop() error {
	select {
	case <-s.done:
		return nil // already gone
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGQUIT)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-s.done:
		return nil
	case <-t.C:
		_ = s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("postgres (pid %d) ignored SIGQUIT for %s; killed", s.cmd.Process.Pid, stopTimeout)
	}
}

// LogTail returns the end of the server log, for error messages.
func (s *Server) LogTail() string {
	data, err := os.ReadFile(s.logFile)
	if err != nil {
		return ""
	}
	const max = 4 << 10
	if len(data) > max {
		data = data[len(data)-max:]
	}
	return "server log (" + s.logFile + "):\n" + string(data)
}

// connect opens a superuser connection marked as the helper's own. Its
// statements are kept out of the log: the statement log is for asserting
// what the code under test sent, and CREATE ROLE would put a password in it.
func (s *Server) connect(db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(s.ConnString(Superuser, s.password, db))
	if err != nil {
		return nil, fmt.Errorf("parse connection config: %w", err)
	}
	cfg.RuntimeParams["application_name"] = helperAppName
	cfg.RuntimeParams["log_statement"] = "none"
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s as %s: %w", db, Superuser, err)
	}
	return conn, nil
}

func (s *Server) exec(db, sql string, args ...any) error {
	conn, err := s.connect(db)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// quoteLiteral quotes s as a standard SQL string literal, which is also the
// quoting postgresql.conf uses. standard_conforming_strings is on by default,
// so backslashes need no escaping.
func quoteLiteral(s string) (string, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return "", errors.New("value contains a NUL byte")
	}
	return "'" + strings.ReplaceAll(s, "'", "''") + "'", nil
}

// statementSQL extracts the SQL from the message of a log_statement line:
// "statement: SQL" (simple protocol) or "execute NAME: SQL" (extended).
func statementSQL(msg string) (string, bool) {
	if sql, ok := strings.CutPrefix(msg, "statement: "); ok {
		return sql, true
	}
	if rest, ok := strings.CutPrefix(msg, "execute "); ok {
		if i := strings.Index(rest, ": "); i >= 0 {
			return rest[i+2:], true
		}
	}
	return "", false
}

// parseStatements reads log_statement entries from a server log written with
// log_line_prefix "%m [%p] %q%u@%d ".
func parseStatements(log []byte) []Statement {
	var out []Statement
	inStatement := false
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 0, 64<<10), 64<<20)
	for sc.Scan() {
		line := sc.Text()
		// PostgreSQL indents every continuation line of a message with one
		// tab; a line without it starts a new entry.
		if cont, ok := strings.CutPrefix(line, "\t"); ok {
			if inStatement {
				out[len(out)-1].SQL += "\n" + cont
			}
			continue
		}
		userDB, severity, msg, ok := splitLogLine(line)
		if !ok {
			inStatement = false
			continue
		}
		inStatement = false
		if severity != "LOG" {
			continue
		}
		sql, ok := statementSQL(msg)
		if !ok {
			continue
		}
		// Role names may contain "@" (identities often do); database
		// names in tests do not, so split at the last one.
		var u, d string
		if i := strings.LastIndexByte(userDB, '@'); i >= 0 {
			u, d = userDB[:i], userDB[i+1:]
		}
		out = append(out, Statement{User: u, Database: d, SQL: sql})
		inStatement = true
	}
	return out
}

// severities are the labels PostgreSQL puts before a log message, each
// followed by a colon and two spaces.
var severities = []string{
	"LOG", "ERROR", "FATAL", "PANIC", "WARNING", "NOTICE", "INFO",
	"DEBUG1", "DEBUG2", "DEBUG3", "DEBUG4", "DEBUG5",
	"DETAIL", "HINT", "QUERY", "CONTEXT", "LOCATION", "STATEMENT",
}

// splitLogLine splits "2025-01-02 03:04:05.678 UTC [123] user@db LOG:  MSG"
// into "user@db", "LOG" and "MSG" (userDB is empty for processes without a
// session). ok is false for a line in any other shape.
func splitLogLine(line string) (userDB, severity, msg string, ok bool) {
	if len(line) < 10 || line[4] != '-' || line[7] != '-' {
		return "", "", "", false
	}
	_, rest, found := strings.Cut(line, "] ")
	if !found {
		return "", "", "", false
	}
	best := -1
	for _, sev := range severities {
		i := strings.Index(rest, sev+":  ")
		// The label either opens rest (no session) or follows "user@db ".
		if i >= 0 && (i == 0 || rest[i-1] == ' ') && (best < 0 || i < best) {
			best, severity = i, sev
		}
	}
	if best < 0 {
		return "", "", "", false
	}
	return strings.TrimSuffix(rest[:best], " "), severity, rest[best+len(severity)+3:], true
}

// freePort asks the kernel for a free port on 127.0.0.1. Another process may
// take it before the postmaster binds it; start retries in that case.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
