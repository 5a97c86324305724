// Command benchpg measures what the gateway costs next to a direct
// connection and next to pgbouncer, in one run on one machine: pgbench -S
// (a point SELECT per transaction), with the simple and the prepared
// protocol, at 1, 8 and 32 clients, against one throwaway PostgreSQL.
//
// All three paths use TLS from pgbench, as production clients do: direct
// (pgbench → PostgreSQL, SCRAM), pgbouncer in transaction pooling (pgbench
// → pgbouncer → PostgreSQL), and the gateway (pgbench with an OIDC token →
// gateway → PostgreSQL; every statement parsed, decided against a signed
// bundle and recorded with fdatasync before it is forwarded).
//
// It prints TPS, each path's ratio to direct, p50/p99 latency from
// pgbench's per-transaction log, the proxy's CPU time per transaction (the
// gateway's from this process's rusage, pgbouncer's from /proc), and the
// gateway's memory per idle authenticated session (a child process holds
// -idle sessions while this process's RSS is read). `make bench` runs it; BENCH_DURATION
// (default 10s) sets each run's length. A benchmark, not a test: nothing
// fails on a number.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatehouse-dev/gatehouse/devenv"
	"github.com/gatehouse-dev/gatehouse/internal/pgcluster"
)

// The policy the gateway enforces: a realistic guardrail set plus the
// grant pgbench's SELECT needs, so a decision evaluates several rules.
const policy = `
identity_provider "corp" {
  issuer    = "https://id.example.com"
  audiences = ["gatehouse"]
}

identity "bench-client" {
  provider = "corp"
  subject  = "bench-client"
}

postgres "bench" {
  address  = "bench-db.internal:5432"
  database = "bench"
  username = "bench"
  password = "env:BENCH_DB_PASSWORD"
}

policy "guardrails" {
  resources = ["bench"]
  everyone  = true

  rule "no-drop-or-truncate" {
    effect = "deny"
    when   = "request.statements.exists(s, s.command.startsWith('DROP ') || s.command == 'TRUNCATE')"
    reason = "nobody may DROP or TRUNCATE"
  }

  rule "no-unfiltered-writes" {
    effect = "deny"
    when   = "request.statements.exists(s, s.command in ['DELETE', 'UPDATE'] && !s.has_where)"
    reason = "DELETE and UPDATE need a WHERE clause"
  }

  rule "no-role-switching" {
    effect = "deny"
    when   = "request.statements.exists(s, (s.command != 'SHOW' && s.setting in ['role', 'session_authorization']) || 'set_config' in s.functions)"
    reason = "no role switching"
  }
}

policy "bench-read" {
  resources  = ["bench"]
  identities = ["bench-client"]

  rule "read" {
    effect = "allow"
    when   = "request.statements.all(s, s.command in ['SELECT', 'BEGIN', 'COMMIT', 'SET', 'SHOW'] && s.tables.all(t, t.access == 'read') && s.functions.all(f, f in ['count']))"
    reason = "the benchmark reads"
  }
}
`

type path struct {
	name     string
	host     string
	port     string
	user     string
	password string
	db       string
	// only, when set, is the one protocol this path runs.
	only string
}

type result struct {
	mode    string
	clients int
	path    string
	tps     float64
	p50     time.Duration
	p99     time.Duration
	// cpu is the proxy's CPU time (user and system) per transaction:
	// the gateway's from this process's rusage (it runs in this process;
	// pgbench and PostgreSQL are other processes), pgbouncer's from
	// /proc. Zero for direct.
	cpu time.Duration
	// perSync is, through the gateway, how many durable events one
	// fdatasync served (the group commit's batch).
	perSync float64
	err     string
}

func main() {
	duration := flag.Duration("duration", durationFromEnv(), "length of each pgbench run (env BENCH_DURATION)")
	scale := flag.Int("scale", 10, "pgbench scale factor (10 = 1M accounts)")
	clientsFlag := flag.String("clients", "1,8,32", "client counts")
	out := flag.String("out", "", "also write the report (markdown) to this file")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of this process (the gateway runs in it) to this file")
	idle := flag.Int("idle", 40, "idle sessions for the memory measurement, at most the gateway's 50 per identity and PostgreSQL's 100 connections (0: skip it)")
	hold := flag.Int("hold", 0, "(child) hold this many idle sessions to -addr until stdin closes")
	addr := flag.String("addr", "", "(child) the gateway's address")
	tokenFile := flag.String("token-file", "", "(child) a file holding the token")
	caFile := flag.String("ca", "", "(child) the CA that signed the gateway's certificate")
	flag.Parse()
	if *hold > 0 {
		if err := holdSessions(*addr, *tokenFile, *caFile, *hold); err != nil {
			fail("%v", err)
		}
		return
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fail("%v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fail("%v", err)
		}
		defer pprof.StopCPUProfile()
	}
	clients, err := parseInts(*clientsFlag)
	if err != nil {
		fail("-clients: %v", err)
	}
	for _, bin := range []string{"pgbench", "pgbouncer"} {
		if _, err := exec.LookPath(bin); err != nil {
			fail("%s is needed: %v (apt-get install postgresql-15 pgbouncer; make bench installs them)", bin, err)
		}
	}
	if err := run(*duration, *scale, clients, *idle, *out); err != nil {
		pprof.StopCPUProfile()
		fail("%v", err)
	}
}

func run(duration time.Duration, scale int, clients []int, idle int, out string) error {
	ctx := context.Background()
	work, err := os.MkdirTemp("", "gatehouse-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	policyDir := filepath.Join(work, "policy")
	if err := os.Mkdir(policyDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(policyDir, "bench.hcl"), []byte(policy), 0o644); err != nil {
		return err
	}

	step("starting PostgreSQL, the development issuer and the gateway")
	env, err := devenv.Start(ctx, devenv.Options{PolicyDir: policyDir, Listen: "127.0.0.1:0", Progress: os.Stdout})
	if err != nil {
		return err
	}
	defer env.Close()
	pg := env.PG
	superuser := path{name: "superuser", host: pg.Host(), port: strconv.Itoa(pg.Port()), user: pgcluster.Superuser, password: pg.SuperuserPassword()}

	step("pgbench -i -s %d (%d accounts)", scale, scale*100000)
	start := time.Now()
	if out, err := pgbench(superuser, env.CAFile, "bench", "-i", "-s", strconv.Itoa(scale), "-q"); err != nil {
		return fmt.Errorf("pgbench -i: %v\n%s", err, out)
	}
	for _, sql := range []string{"GRANT SELECT ON ALL TABLES IN SCHEMA public TO bench", "VACUUM ANALYZE"} {
		if err := pg.Exec("bench", sql); err != nil {
			return err
		}
	}
	fmt.Printf("  initialised in %s\n", time.Since(start).Round(100*time.Millisecond))

	benchPW, err := os.ReadFile(strings.TrimPrefix(env.Model.Postgres[0].Password, "file:"))
	if err != nil {
		return err
	}
	step("starting pgbouncer (transaction pooling, TLS both sides)")
	bouncer, err := startPgbouncer(work, pg, string(benchPW), env)
	if err != nil {
		return err
	}
	defer bouncer.stop()
	fmt.Printf("  pgbouncer on %s\n", bouncer.addr)

	token, err := env.Token("bench-client")
	if err != nil {
		return err
	}
	gwHost, gwPort, _ := net.SplitHostPort(env.Gateway.Addr("postgres"))
	bHost, bPort, _ := net.SplitHostPort(bouncer.addr)
	paths := []path{
		{name: "direct", host: pg.Host(), port: strconv.Itoa(pg.Port()), user: "bench", password: string(benchPW), db: "bench"},
		{name: "pgbouncer", host: bHost, port: bPort, user: "bench", password: "unused", db: "bench"},
		// pgbouncer 1.18 cannot keep protocol-level prepared statements in
		// transaction pooling (1.21 can, with max_prepared_statements): a
		// statement prepared on one server connection is executed on
		// another. Session pooling is what such clients use with it.
		{name: "pgbouncer-session", host: bHost, port: bPort, user: "bench", password: "unused", db: "bench_session", only: "prepared"},
		{name: "gateway", host: gwHost, port: gwPort, user: "bench-client", password: token, db: "bench"},
	}

	step("warming up each path (2s, 8 clients)")
	for _, p := range paths {
		if out, err := pgbench(p, env.CAFile, p.db, "-n", "-S", "-c", "8", "-j", "2", "-T", "2"); err != nil {
			return fmt.Errorf("warm-up through %s: %v\n%s", p.name, err, tail(out))
		}
	}

	total := 0
	for _, p := range paths {
		if p.only == "" {
			total += 2 * len(clients)
		} else {
			total += len(clients)
		}
	}
	step("%d runs of %s each (about %s)", total, duration, (time.Duration(total) * (duration + time.Second)).Round(time.Second))
	var results []result
	n := 0
	for _, mode := range []string{"simple", "prepared"} {
		for _, c := range clients {
			for _, p := range paths {
				if p.only != "" && p.only != mode {
					continue
				}
				n++
				fmt.Printf("  [%2d/%d] %-8s %2d client(s) %-17s ", n, total, mode, c, p.name)
				cpu := cpuMeter(nil)
				if strings.HasPrefix(p.name, "pgbouncer") {
					cpu = cpuMeter(bouncer.cmd.Process)
				} else if p.name == "direct" {
					cpu = nil
				}
				rs := env.Gateway.RecorderStats()
				records0, syncs0 := rs.Records.Load(), rs.Syncs.Load()
				r := runOne(work, p, env.CAFile, mode, c, duration, cpu)
				if p.name == "gateway" {
					if n := rs.Syncs.Load() - syncs0; n > 0 {
						r.perSync = float64(rs.Records.Load()-records0) / float64(n)
					}
				}
				if r.err != "" {
					fmt.Printf("failed: %s\n", r.err)
				} else {
					fmt.Printf("%8.0f tps  p50 %s  p99 %s", r.tps, ms(r.p50), ms(r.p99))
					if r.cpu > 0 {
						fmt.Printf("  cpu %s/tx", us(r.cpu))
					}
					if r.perSync > 0 {
						fmt.Printf("  %.1f events/fdatasync", r.perSync)
					}
					fmt.Println()
				}
				results = append(results, r)
			}
		}
	}
	report := formatReport(results, clients, duration, scale)
	if idle > 0 {
		tokenFile := filepath.Join(work, "token")
		if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
			return err
		}
		step("memory: %d idle authenticated sessions held by another process", idle)
		growth, err := idleMemory(env.Gateway.Addr("postgres"), tokenFile, env.CAFile, idle)
		if err != nil {
			return fmt.Errorf("idle sessions: %w", err)
		}
		report += fmt.Sprintf("\n%d idle authenticated sessions (each with its upstream connection): the gateway's RSS grew by %.1f MiB, %.0f KiB per session.\n",
			idle, float64(growth)/(1<<20), float64(growth)/float64(idle)/1024)
	}
	fmt.Print("\n" + report)
	if out != "" {
		if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
			return err
		}
		fmt.Printf("\nreport written to %s\n", out)
	}
	return nil
}

// runOne runs pgbench -S once and reads its per-transaction log.
func runOne(work string, p path, caFile, mode string, clients int, d time.Duration, cpu func() time.Duration) result {
	r := result{mode: mode, clients: clients, path: p.name}
	logDir, err := os.MkdirTemp(work, "log-")
	if err != nil {
		r.err = err.Error()
		return r
	}
	defer os.RemoveAll(logDir)
	threads := min(clients, 2)
	var cpu0 time.Duration
	if cpu != nil {
		cpu0 = cpu()
	}
	out, err := pgbench(p, caFile, p.db, "-n", "-S", "-M", mode, "-c", strconv.Itoa(clients), "-j", strconv.Itoa(threads),
		"-T", strconv.Itoa(int(d.Seconds())), "--log", "--log-prefix", filepath.Join(logDir, "tx"))
	if err != nil {
		r.err = firstError(out)
		return r
	}
	m := tpsRE(out)
	if m == 0 {
		r.err = "no tps in pgbench output: " + tail(out)
		return r
	}
	r.tps = m
	if n := transactions(out); cpu != nil && n > 0 {
		r.cpu = (cpu() - cpu0) / time.Duration(n)
	}
	lat, err := readLatencies(logDir)
	if err != nil {
		r.err = err.Error()
		return r
	}
	r.p50, r.p99 = percentile(lat, 0.50), percentile(lat, 0.99)
	return r
}

func pgbench(p path, caFile, db string, args ...string) (string, error) {
	all := append([]string{"-h", p.host, "-p", p.port, "-U", p.user}, args...)
	all = append(all, db)
	cmd := exec.Command("pgbench", all...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+p.password, "PGSSLMODE=verify-full", "PGSSLROOTCERT="+caFile, "PGCONNECT_TIMEOUT=10")
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}

// tpsRE reads "tps = 1234.5 (without initial connection time)".
func tpsRE(out string) float64 {
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(line, "tps = "); ok {
			f, _ := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			return f
		}
	}
	return 0
}

// readLatencies reads every per-transaction log pgbench wrote (one per
// thread): "client_id transaction_no time_us script_no epoch epoch_us".
func readLatencies(dir string) ([]time.Duration, error) {
	files, _ := filepath.Glob(filepath.Join(dir, "tx.*"))
	if len(files) == 0 {
		return nil, fmt.Errorf("pgbench wrote no transaction log in %s", dir)
	}
	var lat []time.Duration
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 {
				continue
			}
			us, err := strconv.ParseInt(fields[2], 10, 64)
			if err != nil {
				fh.Close()
				return nil, fmt.Errorf("%s: %q: %v", f, sc.Text(), err)
			}
			lat = append(lat, time.Duration(us)*time.Microsecond)
		}
		fh.Close()
	}
	slices.Sort(lat)
	return lat, nil
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)-1))
	return sorted[i]
}

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

func formatReport(rs []result, clients []int, d time.Duration, scale int) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "pgbench -S (scale %d), %s per run, TLS on every client connection, on %s (%d CPUs)\n\n", scale, d, host, numCPU())
	fmt.Fprintf(&b, "| protocol | clients | path | TPS | vs direct | p50 ms | p99 ms | proxy CPU per tx | events per fdatasync |\n|---|---:|---|---:|---:|---:|---:|---:|---:|\n")
	direct := map[string]result{}
	for _, r := range rs {
		if r.path == "direct" {
			direct[r.mode+strconv.Itoa(r.clients)] = r
		}
	}
	for _, r := range rs {
		if r.err != "" {
			fmt.Fprintf(&b, "| %s | %d | %s | failed: %s | | | | | |\n", r.mode, r.clients, r.path, r.err)
			continue
		}
		ratio := "1.00"
		if dr := direct[r.mode+strconv.Itoa(r.clients)]; dr.tps > 0 && r.path != "direct" {
			ratio = fmt.Sprintf("%.2f", r.tps/dr.tps)
		}
		cpu := "—"
		if r.cpu > 0 {
			cpu = us(r.cpu)
		}
		perSync := "—"
		if r.perSync > 0 {
			perSync = fmt.Sprintf("%.1f", r.perSync)
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %.0f | %s | %s | %s | %s | %s |\n", r.mode, r.clients, r.path, r.tps, ratio, ms(r.p50), ms(r.p99), cpu, perSync)
	}
	b.WriteString("\n")
	if slices.ContainsFunc(rs, func(r result) bool { return r.path == "pgbouncer" && strings.Contains(r.err, "prepared statement") }) {
		b.WriteString("pgbouncer 1.18 in transaction pooling cannot serve protocol-level prepared statements (a statement\n" +
			"prepared on one server connection is executed on another; 1.21+ can, with max_prepared_statements), so\n" +
			"pgbench -M prepared fails through it once several clients share the pool. pgbouncer-session is the same\n" +
			"pgbouncer in session pooling, which such clients use.\n\n")
	}
	for _, mode := range []string{"simple", "prepared"} {
		dr, gw := find(rs, mode, 1, "direct"), find(rs, mode, 1, "gateway")
		if dr.err == "" && gw.err == "" && dr.tps > 0 && gw.tps > 0 {
			fmt.Fprintf(&b, "At 1 client (%s), the gateway adds %s at p50 (%s → %s) and %s at p99.\n",
				mode, us(gw.p50-dr.p50), ms(dr.p50), ms(gw.p50), us(gw.p99-dr.p99))
		}
	}
	if slices.Contains(clients, 8) {
		for _, mode := range []string{"simple", "prepared"} {
			dr := find(rs, mode, 8, "direct")
			for _, p := range []string{"gateway", "pgbouncer", "pgbouncer-session"} {
				r := find(rs, mode, 8, p)
				if dr.tps > 0 && r.tps > 0 {
					fmt.Fprintf(&b, "At 8 clients (%s), %s/direct TPS = %.2f.\n", mode, p, r.tps/dr.tps)
				}
			}
		}
	}
	return b.String()
}

func find(rs []result, mode string, clients int, p string) result {
	for _, r := range rs {
		if r.mode == mode && r.clients == clients && r.path == p {
			return r
		}
	}
	return result{err: "not run"}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d.Microseconds())/1000) }
func us(d time.Duration) string { return fmt.Sprintf("%d µs", d.Microseconds()) }

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return bytes.Count(b, []byte("\nprocessor")) + 1
}

// firstError picks pgbench's first error line, which names the cause.
func firstError(out string) string {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "error") || strings.Contains(line, "ERROR") || strings.Contains(line, "FATAL") {
			return strings.TrimSpace(line)
		}
	}
	return tail(out)
}

func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 300 {
		s = "..." + s[len(s)-300:]
	}
	return s
}

func durationFromEnv() time.Duration {
	if v := os.Getenv("BENCH_DURATION"); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d >= time.Second {
			return d
		}
		fail("BENCH_DURATION=%q: want a duration of at least 1s, such as 10s", v)
	}
	return 10 * time.Second
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive count", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "benchpg: "+format+"\n", args...)
	os.Exit(1)
}

// transactions reads "number of transactions actually processed: 1234".
func transactions(out string) int64 {
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(line, "number of transactions actually processed: "); ok {
			n, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return n
		}
	}
	return 0
}

// cpuMeter reads a proxy's CPU time so far: this process's (the gateway
// runs in it) when p is nil, else p's from /proc/PID/stat (utime and
// stime, in clock ticks of 10 ms; a run has thousands of them).
func cpuMeter(p *os.Process) func() time.Duration {
	if p == nil {
		return func() time.Duration {
			var ru syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
			return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return func() time.Duration {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid))
		if err != nil {
			return 0
		}
		// Fields after the command (which is in parentheses and may
		// hold spaces): state is field 3, utime 14, stime 15.
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			return 0
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		return time.Duration(ut+st) * 10 * time.Millisecond
	}
}

// idleMemory has a child process open n sessions through the gateway and
// keep them idle, and returns how much this process (the gateway) grew.
func idleMemory(addr, tokenFile, caFile string, n int) (int64, error) {
	before := rss()
	child := exec.Command(os.Args[0], "-hold", strconv.Itoa(n), "-addr", addr, "-token-file", tokenFile, "-ca", caFile)
	stdin, err := child.StdinPipe()
	if err != nil {
		return 0, err
	}
	out, err := child.StdoutPipe()
	if err != nil {
		return 0, err
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		_ = child.Process.Kill()
		_ = child.Wait()
		return 0, fmt.Errorf("the child did not hold its sessions: %q %v", line, err)
	}
	time.Sleep(500 * time.Millisecond)
	after := rss()
	stdin.Close()
	_ = child.Wait()
	return after - before, nil
}

// rss is this process's resident memory after a collection.
func rss() int64 {
	runtime.GC()
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// holdSessions is the child: it opens n sessions through the gateway
// (TLS, the token as password; each one authenticated and connected
// upstream), runs one query on each, says "ready", and keeps them idle
// until stdin closes.
func holdSessions(addr, tokenFile, caFile string, n int) error {
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	ctx := context.Background()
	var conns []*pgx.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close(ctx)
		}
	}()
	for i := range n {
		cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=bench-client dbname=bench sslmode=verify-full sslrootcert=%s", host, port, caFile))
		if err != nil {
			return err
		}
		cfg.Password = strings.TrimSpace(string(token))
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return fmt.Errorf("session %d: %w", i+1, err)
		}
		conns = append(conns, c)
		var one int
		if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			return fmt.Errorf("session %d: %w", i+1, err)
		}
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}
