// Command benchkube measures what the Kubernetes API gateway
// (gateway/kubernetes) costs next to talking to the same kube-apiserver
// directly, in one run on one machine:
//
//   - latency of small GETs: GET /api/v1/namespaces/bench/configmaps/small,
//     sequential (-requests, default 2000, after -warmup 200 per path),
//     direct and through the gateway interleaved: p50, p90 and p99 of each,
//     and what the gateway adds at p50 and p99 (goal: ≤ 1 ms at p50;
//     Teleport publishes 29 ms);
//   - throughput: -concurrency clients (default 8) for -duration (default
//     10s) per path: requests per second, this process's CPU per request
//     (getrusage), and the gateway's CPU per request, estimated as this
//     process's CPU per request through the gateway minus its CPU per
//     request direct (the gateway runs in this process and so do the
//     clients; the direct run is the clients' own cost), with its inverse,
//     requests per second per core; kube-apiserver's and etcd's CPU per
//     request from /proc/PID/stat, net of their idle background; and the
//     recorder's fdatasyncs per request. Through the gateway twice: all
//     clients with one token, as kubectl's parallel requests (one session,
//     one recording), and with a token per client (a session each);
//   - masking: GET of a Secret direct, through the gateway for a caller the
//     mask exempts, and for one whose secrets/data is masked: the p50 each
//     adds, and masking's own share.
//
// Everything runs through gatehouse dev's environment (devenv): a real
// kube-apiserver, etcd and kwok (internal/kubecluster) and the real gateway
// in this process, enforcing a signed bundle of the policy below. Every
// client is Go's net/http with the same settings on both paths: HTTP/1.1
// (the gateway's listener speaks HTTP/1.1 only), TLS, keep-alive, one
// connection per client, Accept: application/json. The direct path uses the
// cluster's admin token; the gateway path an OIDC token from the
// development issuer, and the gateway reaches the API server with that same
// admin token through client-go's transport (HTTP/2).
//
// Reproduce (the Kubernetes binaries first: `make kube-binaries`, once):
//
//	go run ./internal/benchkube
//	go run ./internal/benchkube -requests 1000 -duration 5s -out kube.md -cpuprofile kube.prof
//
// `make bench` runs it. A benchmark, not a test: nothing fails on a number;
// it fails only when a request does (and then prints the gateway's log).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/devenv"
	"github.com/gatehouse-dev/gatehouse/gateway"
	"github.com/gatehouse-dev/gatehouse/internal/gotool"
	"github.com/gatehouse-dev/gatehouse/internal/kubecluster"
)

// policy is what the gateway enforces: two subject identities that may
// read everything on the cluster, API discovery, and a mask on Secret
// values that bench-reader's group lifts. devenv points the identity
// provider at its development issuer and the cluster at its API server.
const policy = `
identity_provider "dev" {
  issuer    = "https://id.example.com"
  audiences = ["gatehouse"]
}

identity "bench-reader" {
  provider = "dev"
  subject  = "bench-reader"
  groups   = ["clear"]
}

identity "bench-masked" {
  provider = "dev"
  subject  = "bench-masked"
}

kubernetes_cluster "bench" {
  server = "https://kube.bench.invalid:6443"
  token  = "env:BENCH_KUBE_TOKEN"
}

policy "bench" {
  resources  = ["bench"]
  identities = ["bench-reader", "bench-masked"]

  rule "read" {
    effect = "allow"
    when   = "request.verb in ['get', 'list']"
    reason = "the benchmark reads objects"
  }

  rule "discovery" {
    effect = "allow"
    when   = "request.verb in ['get', 'head'] && (request.path in ['/api', '/apis', '/version'] || request.path.startsWith('/api/') || request.path.startsWith('/apis/') || request.path.startsWith('/openapi/'))"
    reason = "API discovery describes the API, not its objects"
  }
}

mask "bench-secret-values" {
  resources = ["bench"]
  fields    = ["secrets/data"]
  method    = "redact"
  unless    = "'clear' in identity.groups"
}

test "the reader reads Secrets in the clear" {
  identity     = "bench-reader"
  resource     = "bench"
  request      = { verb = "get", resource = "secrets", namespace = "bench", name = "bench-secret" }
  expect       = "allow"
  expect_masks = {}
}

test "the masked caller's Secret values are masked" {
  identity     = "bench-masked"
  resource     = "bench"
  request      = { verb = "get", resource = "secrets", namespace = "bench", name = "bench-secret" }
  expect       = "allow"
  expect_masks = { "kubernetes:secrets/data" = "redact" }
}
`

const (
	namespace     = "bench"
	configMapPath = "/api/v1/namespaces/bench/configmaps/small"
	secretPath    = "/api/v1/namespaces/bench/secrets/bench-secret"
	secretValue   = "bench-s3cr3t-password-value"
	// idleWait outlasts devenv's idle_timeout (3s), so that a gateway
	// session ends, and its recording is sealed, before a direct run is
	// measured rather than during it.
	idleWait = 4500 * time.Millisecond
)

func main() {
	requests := flag.Int("requests", 2000, "sequential GETs per path for the latency measurements")
	warmup := flag.Int("warmup", 200, "sequential GETs per path before measuring")
	concurrency := flag.Int("concurrency", 8, "clients in the throughput runs (one keep-alive connection each)")
	duration := flag.Duration("duration", 10*time.Second, "length of each throughput run")
	out := flag.String("out", "", "also write the markdown report to this file")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the throughput run through the gateway (this process: the gateway and its clients) to this file")
	flag.Parse()
	if *requests < 1 || *warmup < 0 || *concurrency < 1 || *duration <= 0 {
		fmt.Fprintln(os.Stderr, "benchkube: -requests and -concurrency must be positive, -warmup not negative, -duration positive")
		os.Exit(2)
	}
	if err := run(options{requests: *requests, warmup: *warmup, concurrency: *concurrency, duration: *duration, out: *out, cpuprofile: *cpuprofile}); err != nil {
		fmt.Fprintln(os.Stderr, "benchkube:", err)
		os.Exit(1)
	}
}

type options struct {
	requests, warmup, concurrency int
	duration                      time.Duration
	out, cpuprofile               string
}

// bench is the running environment and the three callers' endpoints.
type bench struct {
	env    *devenv.Env
	direct endpoint // the API server, admin token
	reader endpoint // the gateway, bench-reader (Secrets in the clear)
	masked endpoint // the gateway, bench-masked (secrets/data masked)
	api    procCPU  // kube-apiserver
	etcd   procCPU
	// apiIdle and etcdIdle are their CPU per second when idle, in ns.
	apiIdle, etcdIdle float64
	version           string
	// The Secret's answer through the gateway, in bytes: in the clear and
	// masked.
	clearBytes, maskedBytes int
}

func run(o options) error {
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	root, err := gotool.FindRoot(wd)
	if err != nil {
		return fmt.Errorf("run it from the gatehouse checkout: %w", err)
	}
	if _, ok, msg := kubecluster.Available(root); !ok {
		return errors.New(msg + " (`make kube-binaries` does the same)")
	}
	work, err := os.MkdirTemp("", "gatehouse-benchkube-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if err := os.WriteFile(filepath.Join(work, "policy.hcl"), []byte(policy), 0o644); err != nil {
		return err
	}
	load := loadAvg()
	step("starting kube-apiserver, etcd and kwok, the development issuer and the gateway (devenv)")
	ctx := context.Background()
	env, err := devenv.Start(ctx, devenv.Options{PolicyDir: work, KubeListen: "127.0.0.1:0", Root: root, Progress: os.Stdout})
	if err != nil {
		return err
	}
	defer env.Close()
	b, err := newBench(ctx, env)
	if err != nil {
		return b.withLog(err)
	}

	var report bytes.Buffer
	fmt.Fprintf(&report, "## Kubernetes API gateway benchmark\n\n%d CPUs, %s, %s, kube-apiserver %s; load average before start-up: %s.\n\n",
		runtime.NumCPU(), time.Now().UTC().Format("2006-01-02"), runtime.Version(), b.version, load)
	fmt.Fprintf(&report, "Every client is Go's net/http with the same settings on both paths: HTTP/1.1 (the gateway's listener speaks HTTP/1.1 only, so HTTP/1.1 is used direct too), "+
		"TLS, keep-alive, one connection per client, `Accept: application/json`. Direct: the cluster's admin token. Through the gateway: a development OIDC token; "+
		"each request is verified, decided with CEL, recorded, and forwarded with the gateway's own credential (the same admin token) over client-go's transport (HTTP/2 to the API server).\n\n")

	if err := b.latency(&report, o); err != nil {
		return b.withLog(err)
	}
	if err := b.throughput(&report, o); err != nil {
		return b.withLog(err)
	}
	if err := b.masking(&report, o); err != nil {
		return b.withLog(err)
	}
	warnings, expected := gatewayProblems(env.LogFile)
	if len(warnings) > 0 {
		fmt.Fprintf(&report, "The gateway logged %d unexpected warning or error line(s):\n\n```\n%s\n```\n", len(warnings), strings.Join(lastN(warnings, 20), "\n"))
	} else {
		fmt.Fprintf(&report, "The gateway logged no unexpected warning or error")
		if expected > 0 {
			fmt.Fprintf(&report, " (%d expected: sessions ended by the 3 s idle_timeout between runs, the development recorder key)", expected)
		}
		fmt.Fprintf(&report, ".\n")
	}
	fmt.Print("\n" + report.String())
	if o.out != "" {
		if err := os.WriteFile(o.out, report.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func newBench(ctx context.Context, env *devenv.Env) (*bench, error) {
	b := &bench{env: env}
	c := env.Kube
	if c == nil || len(env.KubeClusters) == 0 || env.Gateway.Addr("kubernetes") == "" {
		return b, fmt.Errorf("the environment serves no Kubernetes cluster: %v", env.Skipped)
	}
	step("creating namespace %s, ConfigMap small and Secret bench-secret (admin client)", namespace)
	if err := c.CreateNamespace(ctx, namespace); err != nil {
		return b, err
	}
	admin := c.AdminClient().CoreV1()
	if _, err := admin.ConfigMaps(namespace).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "small"},
		Data:       map[string]string{"greeting": "hello"},
	}, metav1.CreateOptions{}); err != nil {
		return b, fmt.Errorf("create ConfigMap: %w", err)
	}
	cert := make([]byte, 1200) // about the size of a PEM certificate
	_, _ = rand.Read(cert)
	if _, err := admin.Secrets(namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bench-secret"},
		Data: map[string][]byte{
			"username": []byte("bench"),
			"password": []byte(secretValue),
			"tls.crt":  []byte(base64.StdEncoding.EncodeToString(cert)),
		},
	}, metav1.CreateOptions{}); err != nil {
		return b, fmt.Errorf("create Secret: %w", err)
	}

	apiPool := x509.NewCertPool()
	if !apiPool.AppendCertsFromPEM(c.CAPEM) {
		return b, errors.New("the API server's CA does not parse")
	}
	gwCert, _ := gateway.KubernetesTLSPaths(env.DataDir)
	gwPEM, err := os.ReadFile(gwCert)
	if err != nil {
		return b, fmt.Errorf("the gateway's Kubernetes certificate: %w", err)
	}
	gwPool := x509.NewCertPool()
	if !gwPool.AppendCertsFromPEM(gwPEM) {
		return b, fmt.Errorf("the gateway's Kubernetes certificate %s does not parse", gwCert)
	}
	gwBase := "https://" + env.Gateway.Addr("kubernetes") + "/k8s/" + env.KubeClusters[0]
	b.direct = endpoint{name: "direct", base: c.URL, token: c.AdminToken, pool: apiPool}
	for _, x := range []struct {
		ep       *endpoint
		identity string
	}{{&b.reader, "bench-reader"}, {&b.masked, "bench-masked"}} {
		tok, err := env.Token(x.identity)
		if err != nil {
			return b, err
		}
		*x.ep = endpoint{name: "gateway (" + x.identity + ")", base: gwBase, token: tok, pool: gwPool}
	}

	// What each path answers, checked once: the same object both ways, the
	// Secret's value in the clear for the reader and masked otherwise.
	direct, reader, masked := b.direct.client(), b.reader.client(), b.masked.client()
	sizes := map[*client]int{}
	for _, x := range []struct {
		cl   *client
		path string
		want bool // the secret value must appear (false: must not)
	}{{direct, configMapPath, false}, {reader, configMapPath, false}, {direct, secretPath, true}, {reader, secretPath, true}, {masked, secretPath, false}} {
		body, err := x.cl.get(x.path, true)
		if err != nil {
			return b, err
		}
		if x.path == secretPath {
			sizes[x.cl] = len(body)
		}
		has := bytes.Contains(body, []byte(base64.StdEncoding.EncodeToString([]byte(secretValue))))
		if x.path == secretPath && has != x.want {
			return b, fmt.Errorf("%s GET %s: the Secret's value is %s, which the policy's mask says it must not be:\n%s",
				x.cl.ep.name, x.path, map[bool]string{true: "in the clear", false: "masked"}[has], body)
		}
		if x.path == configMapPath && !bytes.Contains(body, []byte(`"greeting":"hello"`)) {
			return b, fmt.Errorf("%s GET %s: not the ConfigMap:\n%s", x.cl.ep.name, x.path, body)
		}
	}
	b.clearBytes, b.maskedBytes = sizes[reader], sizes[masked]
	b.version = "of unknown version"
	if v, err := direct.get("/version", true); err == nil {
		b.version = kubeVersion(v)
	}
	direct.close()
	reader.close()
	masked.close()

	b.api = findChild("--cert-dir=" + filepath.Join(c.Dir, "apiserver"))
	b.etcd = findChild("--data-dir=" + filepath.Join(c.Dir, "etcd"))
	return b, nil
}

// latency: sequential small GETs, direct and through the gateway
// interleaved, so that a slow stretch of a shared machine hits both.
func (b *bench) latency(report io.Writer, o options) error {
	step("small GETs: %d sequential per path after %d warm-up, direct and through the gateway interleaved", o.requests, o.warmup)
	direct, gw := b.direct.client(), b.reader.client()
	defer direct.close()
	defer gw.close()
	rs := b.env.Gateway.RecorderStats()
	syncs0, nanos0, records0 := rs.Syncs.Load(), rs.Nanos.Load(), rs.Records.Load()
	lat, err := interleave(o, configMapPath, direct, gw)
	if err != nil {
		return err
	}
	syncs := float64(rs.Syncs.Load()-syncs0) / float64(o.warmup+o.requests)
	var record time.Duration // the mean time to record a request durably
	if n := rs.Records.Load() - records0; n > 0 {
		record = time.Duration((rs.Nanos.Load() - nanos0) / n)
	}
	ds, gs := summarize(lat[0]), summarize(lat[1])
	addP50, addP99 := gs.p50-ds.p50, gs.p99-ds.p99
	fmt.Printf("    direct p50 %s, gateway p50 %s: added %s\n", ms(ds.p50), ms(gs.p50), ms(addP50))
	fmt.Fprintf(report, "### Latency: GET of a small ConfigMap, %d sequential requests per path (after %d warm-up), interleaved\n\n", o.requests, o.warmup)
	fmt.Fprintf(report, "| path | p50 ms | p90 ms | p99 ms | mean ms |\n|---|---:|---:|---:|---:|\n")
	fmt.Fprintf(report, "| direct | %s | %s | %s | %s |\n", ms(ds.p50), ms(ds.p90), ms(ds.p99), ms(ds.mean))
	fmt.Fprintf(report, "| gateway | %s | %s | %s | %s |\n", ms(gs.p50), ms(gs.p90), ms(gs.p99), ms(gs.mean))
	fmt.Fprintf(report, "| **added by the gateway** | **%s** | %s | **%s** | %s |\n\n", ms(addP50), ms(gs.p90-ds.p90), ms(addP99), ms(gs.mean-ds.mean))
	verdict := "met"
	if addP50 > time.Millisecond {
		verdict = "NOT met"
	}
	fmt.Fprintf(report, "Goal: added p50 ≤ 1 ms (Teleport publishes 29 ms): **%s** (%s ms). Each request through the gateway is recorded durably before it is forwarded: %.2f fdatasyncs per request, %s ms on average to record one (the recorder's own measure, fdatasync included).\n\n", verdict, ms(addP50), syncs, ms(record))
	return nil
}

// interleave runs o.warmup then o.requests GETs of path on each client in
// turn (the order alternating) and returns each client's measured
// latencies.
func interleave(o options, path string, clients ...*client) ([][]time.Duration, error) {
	lat := make([][]time.Duration, len(clients))
	for i := range lat {
		lat[i] = make([]time.Duration, 0, o.requests)
	}
	for i := range o.warmup + o.requests {
		for j := range clients {
			k := j
			if i%2 == 1 {
				k = len(clients) - 1 - j
			}
			c := clients[k]
			start := time.Now()
			if _, err := c.get(path, false); err != nil {
				return nil, err
			}
			if i >= o.warmup {
				lat[k] = append(lat[k], time.Since(start))
			}
		}
	}
	return lat, nil
}

// throughput runs o.concurrency clients for o.duration on each path:
// direct; through the gateway with one token, as kubectl's parallel
// requests are (one session, one recording); and through the gateway with
// a token per client (a session each), which shows what the one session
// serialises.
func (b *bench) throughput(report io.Writer, o options) error {
	step("throughput: %d clients for %s per path (waiting %s before the direct run, so that the gateway's idle session is sealed before it, not during it)", o.concurrency, o.duration, idleWait)
	tokens := make([]endpoint, o.concurrency)
	for i := range tokens {
		tok, err := b.env.Issuer.Mint("dev", "bench-reader", nil, devenv.TokenTTL)
		if err != nil {
			return err
		}
		tokens[i] = b.reader
		tokens[i].token = tok
	}
	// The wait also measures kube-apiserver's and etcd's background
	// (kwok's node leases and status, the API server's own controllers),
	// which is taken out of their CPU per request.
	api0, etcd0 := b.api.read(), b.etcd.read()
	time.Sleep(idleWait)
	b.apiIdle = float64(b.api.read()-api0) / idleWait.Seconds()
	b.etcdIdle = float64(b.etcd.read()-etcd0) / idleWait.Seconds()
	d, err := b.load(o, "", func(int) endpoint { return b.direct })
	if err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	fmt.Printf("    direct: %.0f requests/s, this process %s of CPU per request\n", d.rate(), us(d.selfPerReq()))
	g, err := b.load(o, o.cpuprofile, func(int) endpoint { return b.reader })
	if err != nil {
		return fmt.Errorf("through the gateway: %w", err)
	}
	fmt.Printf("    gateway, one token: %.0f requests/s, this process %s of CPU per request, %.2f fdatasyncs per request\n", g.rate(), us(g.selfPerReq()), g.syncsPerReq())
	gm, err := b.load(o, "", func(i int) endpoint { return tokens[i] })
	if err != nil {
		return fmt.Errorf("through the gateway, a token per client: %w", err)
	}
	fmt.Printf("    gateway, a token per client: %.0f requests/s, this process %s of CPU per request, %.2f fdatasyncs per request\n", gm.rate(), us(gm.selfPerReq()), gm.syncsPerReq())

	fmt.Fprintf(report, "### Throughput: GET of the small ConfigMap, %d clients for %s per path\n\n", o.concurrency, o.duration)
	fmt.Fprintf(report, "| path | requests/s | vs direct | this process's CPU per request | gateway's CPU per request | kube-apiserver CPU per request | etcd CPU per request | fdatasyncs per request |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range []struct {
		name string
		l    loadResult
		gw   bool
	}{{"direct", d, false}, {"gateway, one token (one session, as kubectl)", g, true}, {"gateway, a token per client (a session each)", gm, true}} {
		gwCPU, syncs := "", ""
		if r.gw {
			gwCPU, syncs = us(r.l.selfPerReq()-d.selfPerReq()), fmt.Sprintf("%.2f", r.l.syncsPerReq())
		}
		fmt.Fprintf(report, "| %s | %.0f | %.2f | %s | %s | %s | %s | %s |\n", r.name, r.l.rate(), r.l.rate()/d.rate(), us(r.l.selfPerReq()), gwCPU,
			r.l.perReq(r.l.api, b.apiIdle, b.api), r.l.perReq(r.l.etcd, b.etcdIdle, b.etcd), syncs)
	}
	fmt.Fprintln(report)
	if gwCPU := g.selfPerReq() - d.selfPerReq(); gwCPU > 0 {
		fmt.Fprintf(report, "**The gateway's CPU per request: %s** (one token; this process's CPU per request through the gateway minus direct, where it is the clients' own): "+
			"**%.0f requests per second per core**.", us(gwCPU), 1/gwCPU.Seconds())
	} else {
		fmt.Fprintf(report, "The gateway's CPU per request could not be estimated: this process spent no more per request through the gateway (%s) than direct (%s).",
			us(g.selfPerReq()), us(d.selfPerReq()))
	}
	if !b.api.ok() {
		fmt.Fprintf(report, " kube-apiserver's process was not found among this process's children, so its CPU is not reported.")
	}
	fmt.Fprintf(report, " kube-apiserver's and etcd's CPU come from /proc/PID/stat (10 ms ticks), net of what they use idle (measured for %s before the direct run: %.0f ms and %.0f ms of CPU per second). All of it shares this machine's cores: the clients, the gateway, kube-apiserver, etcd and kwok.\n\n",
		idleWait, b.apiIdle/float64(time.Millisecond), b.etcdIdle/float64(time.Millisecond))
	return nil
}

type loadResult struct {
	n, failed int64
	elapsed   time.Duration
	self      time.Duration // this process's CPU
	api, etcd time.Duration // their CPU, when found
	syncs     int64         // the recorder's fdatasyncs
}

func (l loadResult) rate() float64 { return float64(l.n) / l.elapsed.Seconds() }
func (l loadResult) selfPerReq() time.Duration {
	return time.Duration(float64(l.self) / float64(max(l.n, 1)))
}
func (l loadResult) syncsPerReq() float64 { return float64(l.syncs) / float64(max(l.n, 1)) }

// perReq is a process's CPU per request, net of its idle background
// (CPU per second).
func (l loadResult) perReq(cpu time.Duration, idle float64, p procCPU) string {
	if !p.ok() {
		return "n/a"
	}
	net := float64(cpu) - idle*l.elapsed.Seconds()
	return us(time.Duration(max(net, 0) / float64(max(l.n, 1))))
}

// load runs o.concurrency clients, client i on endpoint(i) with its own
// connection, for o.duration, after three warm-up requests each, and reads
// the CPU used and the recorder's fdatasyncs.
func (b *bench) load(o options, cpuprofile string, endpoint func(i int) endpoint) (loadResult, error) {
	clients := make([]*client, o.concurrency)
	for i := range clients {
		ep := endpoint(i)
		clients[i] = ep.client()
		defer clients[i].close()
		for range 3 {
			if _, err := clients[i].get(configMapPath, false); err != nil {
				return loadResult{}, err
			}
		}
	}
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return loadResult{}, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return loadResult{}, err
		}
		defer pprof.StopCPUProfile()
	}
	var (
		stop     atomic.Bool
		count    atomic.Int64
		failed   atomic.Int64
		firstErr error
		mu       sync.Mutex
		wg       sync.WaitGroup
	)
	rs := b.env.Gateway.RecorderStats()
	self0, api0, etcd0, syncs0 := selfCPU(), b.api.read(), b.etcd.read(), rs.Syncs.Load()
	start := time.Now()
	for _, c := range clients {
		wg.Go(func() {
			for !stop.Load() {
				if _, err := c.get(configMapPath, false); err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				count.Add(1)
			}
		})
	}
	time.Sleep(o.duration)
	stop.Store(true)
	wg.Wait()
	r := loadResult{n: count.Load(), failed: failed.Load(), elapsed: time.Since(start),
		self: selfCPU() - self0, api: b.api.read() - api0, etcd: b.etcd.read() - etcd0, syncs: rs.Syncs.Load() - syncs0}
	if firstErr != nil {
		return r, fmt.Errorf("%d of %d requests failed; the first: %w", r.failed, r.failed+r.n, firstErr)
	}
	return r, nil
}

// masking: GETs of the Secret direct, through the gateway in the clear
// (the reader), and masked.
func (b *bench) masking(report io.Writer, o options) error {
	step("masked GETs: the Secret, %d sequential per path after %d warm-up: direct, gateway in the clear, gateway masked (secrets/data)", o.requests, o.warmup)
	direct, reader, masked := b.direct.client(), b.reader.client(), b.masked.client()
	defer direct.close()
	defer reader.close()
	defer masked.close()
	lat, err := interleave(o, secretPath, direct, reader, masked)
	if err != nil {
		return err
	}
	ds, rs, msum := summarize(lat[0]), summarize(lat[1]), summarize(lat[2])
	fmt.Printf("    direct p50 %s, gateway in the clear %s, gateway masked %s\n", ms(ds.p50), ms(rs.p50), ms(msum.p50))
	fmt.Fprintf(report, "### Masking: GET of a Secret (3 keys, about 2 KB), %d sequential requests per path, interleaved\n\n", o.requests)
	fmt.Fprintf(report, "| path | p50 ms | p99 ms | added p50 ms |\n|---|---:|---:|---:|\n")
	fmt.Fprintf(report, "| direct | %s | %s | |\n", ms(ds.p50), ms(ds.p99))
	fmt.Fprintf(report, "| gateway, in the clear (mask lifted by `unless`) | %s | %s | %s |\n", ms(rs.p50), ms(rs.p99), ms(rs.p50-ds.p50))
	fmt.Fprintf(report, "| gateway, `secrets/data` masked (redact) | %s | %s | **%s** |\n\n", ms(msum.p50), ms(msum.p99), ms(msum.p50-ds.p50))
	fmt.Fprintf(report, "Masking's own cost at p50 (masked minus in the clear): %s ms: the answer is read whole, decoded, rewritten and re-encoded "+
		"(and comes out smaller: %d bytes masked, %d in the clear, as every value becomes the redaction marker).\n\n", ms(msum.p50-rs.p50), b.maskedBytes, b.clearBytes)
	return nil
}

// endpoint is a base URL and a bearer token.
type endpoint struct {
	name, base, token string
	pool              *x509.CertPool
}

// client is one keep-alive HTTP/1.1 connection's worth of client.
type client struct {
	ep *endpoint
	tr *http.Transport
	hc *http.Client
}

func (ep *endpoint) client() *client {
	var protos http.Protocols
	protos.SetHTTP1(true)
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: ep.pool, MinVersion: tls.VersionTLS12},
		Protocols:           &protos,
		MaxIdleConns:        1,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	return &client{ep: ep, tr: tr, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func (c *client) close() { c.tr.CloseIdleConnections() }

// get does one GET and reads the whole answer; keep returns the body.
func (c *client) get(path string, keep bool) ([]byte, error) {
	req, err := http.NewRequest(http.MethodGet, c.ep.base+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.ep.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "gatehouse-benchkube")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s GET %s: %w", c.ep.name, path, err)
	}
	defer resp.Body.Close()
	var body []byte
	if keep || resp.StatusCode != http.StatusOK {
		body, err = io.ReadAll(resp.Body)
	} else {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	if err != nil {
		return nil, fmt.Errorf("%s GET %s: reading the answer: %w", c.ep.name, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s GET %s: %s: %s", c.ep.name, path, resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}

type summary struct{ p50, p90, p99, mean time.Duration }

func summarize(xs []time.Duration) summary {
	s := slices.Clone(xs)
	slices.Sort(s)
	var total time.Duration
	for _, x := range s {
		total += x
	}
	at := func(q float64) time.Duration {
		i := int(q*float64(len(s))+0.999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return summary{p50: at(0.50), p90: at(0.90), p99: at(0.99), mean: total / time.Duration(len(s))}
}

// selfCPU is this process's user and system CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU reads another process's CPU time from /proc/PID/stat; pid 0
// means it was not found.
type procCPU struct{ pid int }

func (p procCPU) ok() bool { return p.pid > 0 }

// read is utime + stime, in clock ticks of 10 ms (USER_HZ is 100 on
// Linux's common architectures).
func (p procCPU) read() time.Duration {
	if !p.ok() {
		return 0
	}
	f := statFields(p.pid)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// statFields are the fields of /proc/PID/stat after the command (which is
// in parentheses and may hold spaces): state first, then ppid.
func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// findChild finds the child of this process whose command line has arg:
// kubecluster starts kube-apiserver and etcd as direct children but does
// not expose their ids.
func findChild(arg string) procCPU {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return procCPU{}
	}
	self := strconv.Itoa(os.Getpid())
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(pid); len(f) < 2 || f[1] != self {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		if slices.Contains(strings.Split(string(cmdline), "\x00"), arg) {
			return procCPU{pid: pid}
		}
	}
	return procCPU{}
}

// withLog adds the gateway's warnings and errors, and the tail of its log,
// to a failure.
func (b *bench) withLog(err error) error {
	if b == nil || b.env == nil || b.env.LogFile == "" {
		return err
	}
	data, _ := os.ReadFile(b.env.LogFile)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return fmt.Errorf("%w\n--- the gateway's log (%s), last lines ---\n%s", err, b.env.LogFile, strings.Join(lastN(lines, 40), "\n"))
}

// gatewayProblems are the WARN and ERROR lines of the gateway's log, but
// for the expected ones, which are only counted: sessions ended by the
// idle_timeout between runs, and devenv's recorder key in the data
// directory.
func gatewayProblems(logFile string) (problems []string, expected int) {
	data, err := os.ReadFile(logFile)
	if err != nil {
		return []string{fmt.Sprintf("(the gateway's log could not be read: %v)", err)}, 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if !strings.Contains(l, "level=WARN") && !strings.Contains(l, "level=ERROR") {
			continue
		}
		if strings.Contains(l, "level=WARN") && (strings.Contains(l, "code=idle") || strings.Contains(l, "the recorder key is in the data directory")) {
			expected++
			continue
		}
		problems = append(problems, l)
	}
	return problems, expected
}

func lastN(xs []string, n int) []string {
	if len(xs) > n {
		return xs[len(xs)-n:]
	}
	return xs
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// kubeVersion is the API server's gitVersion from its /version answer.
func kubeVersion(b []byte) string {
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	if json.Unmarshal(b, &v) != nil || v.GitVersion == "" {
		return "of unknown version"
	}
	return v.GitVersion
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d)/float64(time.Millisecond)) }
func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond)) }

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }
