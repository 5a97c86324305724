// Command benchpg measures what the gateway costs next to a direct
// connection and next to pgbouncer, in one run on one machine: pgbench -S
// (a point SELECT per transaction), with the simple and the prepared
// protocol, at 1, 8 and 32 clients, against one throwaway PostgreSQL.
//
// All three paths use TLS from pgbench, as production clients do: direct
// (pgbench → PostgreSQL, SCRAM), pgbouncer in transaction pooling (pgbench
// → pgbouncer → PostgreSQL), and the gateway (pgbench with an OIDC token →
// gateway → PostgreSQL; every statement parsed, decided against a signed
// bundle and recorded with fdatasync before it is forwarded). Two more
// gateway paths: gateway-overlap, a second gateway in this process with
// the overlapped durability mode, and gateway-masked, the first gateway
// with a caller whose reads are masked (prepared statements only, so every
// Execute needs its rows' layout).
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
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/devenv"
	"github.com/gatehouse-dev/gatehouse/gateway"
	"github.com/gatehouse-dev/gatehouse/internal/benchmem"
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

# The same reads with a column mask: pgbench -S selects abalance, so every
# row is masked, and every Execute needs its rows' layout.
identity "bench-masked" {
  provider = "corp"
  subject  = "bench-masked"
}

mask "balance" {
  resources = ["bench"]
  columns   = ["pgbench_accounts.abalance"]
  method    = "redact"
  unless    = "identity.name != 'bench-masked'"
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
  identities = ["bench-client", "bench-masked"]

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
	pathsFlag := flag.String("paths", "", "the paths to run besides direct, which the ratios need (default: all): "+strings.Join(pathNames, ","))
	idle := flag.Int("idle", 40, "idle sessions for the memory measurement, at most the gateway's 50 per identity (0: skip it)")
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
	only, err := parsePaths(*pathsFlag)
	if err != nil {
		fail("-paths: %v", err)
	}
	for _, bin := range []string{"pgbench", "pgbouncer"} {
		if _, err := exec.LookPath(bin); err != nil {
			fail("%s is needed: %v (apt-get install postgresql-15 pgbouncer; make bench installs them)", bin, err)
		}
	}
	if err := run(*duration, *scale, clients, only, *idle, *out); err != nil {
		pprof.StopCPUProfile()
		fail("%v", err)
	}
}

func run(duration time.Duration, scale int, clients []int, only map[string]bool, idle int, out string) error {
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
	// pgbouncer's two pools keep up to 2 × 32 server connections, and
	// two gateways and the idle sessions need their own: more than
	// PostgreSQL's default 100.
	env, err := devenv.Start(ctx, devenv.Options{PolicyDir: policyDir, Listen: "127.0.0.1:0", Progress: os.Stdout,
		PGOptions: []pgcluster.Option{pgcluster.WithConfig("max_connections", "300")}})
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

	masked, err := env.Token("bench-masked")
	if err != nil {
		return err
	}
	token, err := env.Token("bench-client")
	if err != nil {
		return err
	}
	// The same gateway with the overlapped durability mode: a statement
	// is forwarded once its event is written, and its response is held
	// until the event is durable.
	overlap, err := env.StartExtraGateway(ctx, func(c *gateway.Config) { c.Recorder.Durability = gateway.DurabilityBeforeResponse })
	if err != nil {
		return fmt.Errorf("the before_response gateway: %w", err)
	}
	gateways := map[string]*gateway.Gateway{"gateway": env.Gateway, "gateway-overlap": overlap, "gateway-masked": env.Gateway}
	gwHost, gwPort, _ := net.SplitHostPort(env.Gateway.Addr("postgres"))
	ovHost, ovPort, _ := net.SplitHostPort(overlap.Addr("postgres"))
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
		{name: "gateway-overlap", host: ovHost, port: ovPort, user: "bench-client", password: token, db: "bench"},
		// A masked caller's prepared reads: each Execute's rows need their
		// layout (a Describe of the portal in the same batch).
		{name: "gateway-masked", host: gwHost, port: gwPort, user: "bench-masked", password: masked, db: "bench", only: "prepared"},
	}

	paths = slices.DeleteFunc(paths, func(p path) bool { return only != nil && p.name != "direct" && !only[p.name] })
	for _, p := range paths {
		if p.name == "gateway-masked" {
			// pgbench -i leaves every abalance 0, and -S changes none.
			if err := checkMasked(p, env.CAFile, 0); err != nil {
				return fmt.Errorf("the masked path: %w", err)
			}
		}
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
				gw := gateways[p.name]
				if gw == nil {
					gw = env.Gateway
				}
				rs := gw.RecorderStats()
				records0, syncs0 := rs.Records.Load(), rs.Syncs.Load()
				r := runOne(work, p, env.CAFile, mode, c, duration, cpu)
				if gateways[p.name] != nil {
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
	// pgbouncer is done: its pooled server connections go.
	bouncer.stop()
	if idle > 0 {
		tokenFile := filepath.Join(work, "token")
		if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
			return err
		}
		step("memory: %d idle authenticated sessions held by another process", idle)
		growth, err := benchmem.Growth("-hold", strconv.Itoa(idle), "-addr", env.Gateway.Addr("postgres"), "-token-file", tokenFile, "-ca", env.CAFile)
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

// pathNames are the paths a run can take besides direct.
var pathNames = []string{"pgbouncer", "pgbouncer-session", "gateway", "gateway-overlap", "gateway-masked"}

// parsePaths reads -paths: nil (every path) when empty.
func parsePaths(s string) (map[string]bool, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	only := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f != "direct" && !slices.Contains(pathNames, f) {
			return nil, fmt.Errorf("%q is not a path (one of direct, %s)", f, strings.Join(pathNames, ", "))
		}
		only[f] = true
	}
	return only, nil
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
