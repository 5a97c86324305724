// Command benchreplicas measures what running the gateway as several
// replicas on shared state costs, in one run on one machine (issue 18):
//
//  1. Held-statement release latency across replicas. A pgx client on
//     replica A runs an INSERT that a review rule holds (hold = true, the
//     default). When the gateway's NOTICE names the approval, an approver
//     (a token from the development issuer for the rule's approver group)
//     POSTs /v1/approvals/{id}/approve, the call `gatehouse approvals
//     approve` makes, either to replica B's admin API (the settlement
//     reaches A through the state database: LISTEN/NOTIFY, with a 1s poll
//     as the fallback) or to A's own (the local path, the baseline). The
//     latency is the time from the approve call's HTTP response to the held
//     statement's completion on A (CommandComplete read by the client); the
//     time from sending the approve call is reported too. The two paths
//     alternate, -n times each (after 3 unmeasured warm-ups), and the report
//     gives p50, p90 and max of each. The floor is the same INSERT into a
//     table no rule holds (notes), timed on A from sending it: executing
//     and recording the statement is part of every release.
//
//  2. Throughput, three replicas against one. -clients pgx clients (TLS,
//     an OIDC token as password, one session each) run a point SELECT the
//     policy allows for -duration, first all against replica A, then spread
//     round-robin over A, B and C. The same PostgreSQL is the upstream of
//     all three. The two set-ups alternate for -rounds rounds (2s of
//     warm-up before each run). The report gives tx/s of each run, p50/p99
//     latency, events per recorder fdatasync, and the ratio (three
//     replicas / one) of the summed transactions over the summed time. On a machine with few cores (make bench
//     runs on 2 vCPUs) the three replicas, the clients and PostgreSQL share
//     the same cores, so the ratio measures the overhead of replication, not
//     scale-out: a ratio near 1 means replicas cost nothing on the data
//     path; it cannot show more capacity.
//
// Everything is the production code: a throwaway PostgreSQL from the
// system's binaries (internal/pgcluster, via devenv), a development OIDC
// issuer, and three gateway.Gateway replicas in this process, each with its
// own data directory, listeners and recordings, sharing one signed bundle
// file and one state database (state { postgres = "env:..." },
// approval.OpenPostgres). devenv's own gateway (file-backed approvals)
// stays up, idle, beside them. The clients run in this process too, so the
// CPU time per transaction reported is that of the gateways and the clients
// together.
//
// Reproduce:
//
//	go run ./internal/benchreplicas                       # -n 50 -clients 8 -duration 10s
//	go run ./internal/benchreplicas -n 30 -duration 5s -out replicas.md
//
// A benchmark, not a test: nothing fails on a number.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/devenv"
	"github.com/gatehouse-dev/gatehouse/gateway"
)

// The policy: the bench client may read items and insert into payments;
// every write to payments is held for a DBA (hold defaults to true).
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

policy "bench" {
  resources  = ["bench"]
  identities = ["bench-client"]

  rule "work" {
    effect = "allow"
    when   = "request.statements.all(s, s.command in ['SELECT', 'INSERT', 'BEGIN', 'COMMIT', 'SET', 'SHOW'])"
    reason = "the benchmark reads items and writes payments"
  }
}

policy "reviews" {
  resources = ["bench"]
  everyone  = true

  rule "payments" {
    effect = "review"
    when   = "request.statements.exists(s, s.tables.exists(t, t.name == 'payments' && t.access == 'write'))"
    reason = "writes to payments need a DBA"
    approval {
      groups  = ["dba"]
      timeout = "5m"
    }
  }
}
`

const seed = `
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 10000) g;
CREATE TABLE payments (id int NOT NULL, amount numeric NOT NULL);
CREATE TABLE notes (id int NOT NULL, amount numeric NOT NULL);
ANALYZE items;
`

// stateDSNEnv is the variable the replicas' state reference names.
const stateDSNEnv = "BENCHREPLICAS_STATE_DSN"

func main() {
	n := flag.Int("n", 50, "held statements released per path (across replicas, and on the same replica)")
	clients := flag.Int("clients", 8, "pgx clients for the throughput runs (at most 50: the gateway's sessions per identity)")
	duration := flag.Duration("duration", 10*time.Second, "length of each throughput run")
	mode := flag.String("mode", "prepared", "the throughput clients' protocol: prepared (extended protocol, statement prepared once per session) or simple")
	rounds := flag.Int("rounds", 2, "throughput rounds; each runs one replica, then three")
	out := flag.String("out", "", "also write the report (markdown) to this file")
	flag.Parse()
	if *n < 1 || *clients < 1 || *rounds < 1 || *duration < time.Second {
		fail("-n and -clients must be positive and -duration at least 1s")
	}
	if *mode != "prepared" && *mode != "simple" {
		fail("-mode: prepared or simple")
	}
	if err := run(*n, *clients, *duration, *mode, *rounds, *out); err != nil {
		fail("%v", err)
	}
}

type bench struct {
	env      *devenv.Env
	work     string
	replicas []*replica
	token    string // bench-client's
	approver string // a token of an approver in group dba
}

func run(n, clients int, duration time.Duration, mode string, rounds int, out string) error {
	ctx := context.Background()
	work, err := os.MkdirTemp("", "gatehouse-benchreplicas-")
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

	step("starting PostgreSQL, the development issuer and the bundle (devenv)")
	env, err := devenv.Start(ctx, devenv.Options{PolicyDir: policyDir, Listen: "127.0.0.1:0", Progress: os.Stdout,
		Seeds: map[string]string{"bench": seed}})
	if err != nil {
		return err
	}
	defer env.Close()
	b := &bench{env: env, work: work}
	if b.token, err = env.Token("bench-client"); err != nil {
		return err
	}
	appr, ok := env.Approver("dba")
	if !ok {
		return errors.New("devenv minted no approver token for group dba")
	}
	tok, err := os.ReadFile(appr.TokenFile)
	if err != nil {
		return err
	}
	b.approver = strings.TrimSpace(string(tok))

	step("creating the state database and starting three replicas on it")
	statePW := "state-" + fmt.Sprint(time.Now().UnixNano())
	if err := env.PG.CreateRole("gatehouse_state", statePW); err != nil {
		return err
	}
	if err := env.PG.CreateDatabase("gatehouse_state", "gatehouse_state"); err != nil {
		return err
	}
	os.Setenv(stateDSNEnv, env.PG.ConnString("gatehouse_state", statePW, "gatehouse_state"))
	b.replicas, err = startReplicas(ctx, env, work, 3)
	for _, r := range b.replicas {
		defer r.stop()
	}
	if err != nil {
		return err
	}
	for i, r := range b.replicas {
		fmt.Printf("  replica %c: postgres on %s, admin on http://%s, data in %s\n", 'A'+i, r.g.Addr("postgres"), r.g.AdminAddr, r.dataDir)
	}

	step("held-statement release: %d across replicas (client on A, approved on B) and %d on the same replica (A), alternating", n, n)
	rel, err := b.release(ctx, n)
	if err != nil {
		return b.withLogs(err)
	}

	step("throughput: %d clients, %s protocol, %s per run, %d round(s) of one replica then three", clients, mode, duration, rounds)
	tp, err := b.throughput(ctx, clients, duration, mode, rounds)
	if err != nil {
		return b.withLogs(err)
	}

	report := formatReport(rel, tp, n, clients, duration, mode)
	if w := b.warnings(); w != "" {
		report += "\nThe replicas logged warnings or errors during the run:\n\n```\n" + w + "```\n"
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

// replica is one gateway of the three, running in this process.
type replica struct {
	g       *gateway.Gateway
	dataDir string
	logFile string
	cancel  context.CancelFunc
	done    chan error
	log     *os.File
}

// startReplicas starts count gateways at once (the state schema's
// migration is safe with replicas starting together), each with its own
// data directory and ports, the devenv's bundle file and certificate, and
// the shared state database.
func startReplicas(ctx context.Context, env *devenv.Env, work string, count int) ([]*replica, error) {
	var rs []*replica
	errs := make(chan error, count)
	for i := range count {
		dataDir := filepath.Join(work, fmt.Sprintf("replica-%c", 'a'+i))
		logFile := dataDir + ".log"
		f, err := os.Create(logFile)
		if err != nil {
			return rs, err
		}
		cfg := &gateway.Config{
			DataDir: dataDir,
			Postgres: &gateway.PostgresListener{Listen: "127.0.0.1:0",
				TLSCert: filepath.Join(env.Dir, "tls.crt"), TLSKey: filepath.Join(env.Dir, "tls.key")},
			Bundle: gateway.BundleSource{File: env.BundleFile, TrustedKeys: []string{filepath.Join(env.Dir, "bundle.pub")},
				PollInterval: time.Second},
			Admin:     gateway.AdminListener{Listen: "127.0.0.1:0"},
			State:     gateway.StateConfig{Postgres: "env:" + stateDSNEnv},
			Log:       gateway.LogConfig{Level: "info", Format: "text"},
			ClockSkew: 30 * time.Second,
		}
		g, err := gateway.New(cfg, gateway.WithLogger(gateway.NewLogger(cfg.Log, f)), gateway.WithDevIssuers())
		if err != nil {
			f.Close()
			return rs, fmt.Errorf("replica %c: %w", 'A'+i, err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		r := &replica{g: g, dataDir: dataDir, logFile: logFile, cancel: cancel, done: make(chan error, 1), log: f}
		rs = append(rs, r)
		go func() { r.done <- g.Run(runCtx) }()
		go func() { errs <- r.waitActive(30 * time.Second) }()
	}
	var all []error
	for range count {
		if err := <-errs; err != nil {
			all = append(all, err)
		}
	}
	return rs, errors.Join(all...)
}

func (r *replica) waitActive(timeout time.Duration) error {
	deadline := time.After(timeout)
	select {
	case <-r.g.Ready:
	case err := <-r.done:
		r.done <- err
		return fmt.Errorf("%s: the gateway stopped: %w", r.dataDir, err)
	case <-deadline:
		return fmt.Errorf("%s: not listening within %s", r.dataDir, timeout)
	}
	for r.g.Store().Current() == nil {
		select {
		case err := <-r.done:
			r.done <- err
			return fmt.Errorf("%s: the gateway stopped: %w", r.dataDir, err)
		case <-deadline:
			return fmt.Errorf("%s: no active bundle within %s", r.dataDir, timeout)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func (r *replica) stop() {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		fmt.Fprintf(os.Stderr, "benchreplicas: %s did not stop within 10s\n", r.dataDir)
	}
	r.log.Close()
}

// withLogs adds the tail of each replica's log to an error.
func (b *bench) withLogs(err error) error {
	var s strings.Builder
	fmt.Fprintf(&s, "%v", err)
	for i, r := range b.replicas {
		data, _ := os.ReadFile(r.logFile)
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		fmt.Fprintf(&s, "\n--- replica %c log (last lines) ---\n%s", 'A'+i, strings.Join(lines, "\n"))
	}
	return errors.New(s.String())
}

// warnings returns the replicas' WARN and ERROR log lines (at most 20).
func (b *bench) warnings() string {
	var s strings.Builder
	count := 0
	for i, r := range b.replicas {
		data, _ := os.ReadFile(r.logFile)
		for _, line := range strings.Split(string(data), "\n") {
			if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
				if count < 20 {
					fmt.Fprintf(&s, "replica %c: %s\n", 'A'+i, line)
				}
				count++
			}
		}
	}
	if count > 20 {
		fmt.Fprintf(&s, "... and %d more\n", count-20)
	}
	return s.String()
}

func numCPU() int { return runtime.NumCPU() }

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "benchreplicas: "+format+"\n", args...)
	os.Exit(1)
}
