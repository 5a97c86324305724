// Package kubecluster runs a real, private Kubernetes API server: etcd and
// kube-apiserver on random ports of 127.0.0.1, with a throwaway CA, static
// bearer tokens and RBAC, and optionally kwok, which fakes nodes and pods
// so that `kubectl exec` and `kubectl logs` go through the real API server.
// `gatehouse dev` and the tests' helper (internal/kubetest) start their
// clusters through it. Nothing stands in for the API server: what the
// gateway talks to is kube-apiserver itself.
//
// The binaries are built from the nested module acctest/kubetools, which
// pins kube-apiserver v1.37.x, etcd v3.7.x and kwok v0.8.x, into
// .cache/bin/ at the repository root (Binaries; about 10 minutes once on a
// cold Go cache). A cluster starts in about 3 seconds:
//
//	paths, err := kubecluster.Binaries(ctx, root, os.Stderr)
//	c, err := kubecluster.Start(ctx, dir, paths,
//		kubecluster.WithToken("alice", "alice-token", "developers"),
//		kubecluster.WithKwok())
//	defer c.Close()
//	pod, err := c.CreatePod(ctx, "demo", "web-0") // Running on a kwok node
//	kubeconfig, err := c.KubeconfigFor(c.AdminToken)
//
// There is no controller-manager and no scheduler: pods must name their
// node (CreatePod does), service accounts are not created, and deleting a
// namespace leaves it Terminating.
//
// Every process runs as a direct child in its own process group; Close
// stops the groups (kwok's exec'd commands included), and if the calling
// process dies without Close, the kernel kills the children through the
// parent-death signal.
package kubecluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/gatehouse-dev/gatehouse/internal/gotool"
)

const (
	// AdminUser is the user the AdminToken authenticates as, in the group
	// system:masters, which RBAC lets do anything (including
	// impersonation).
	AdminUser = "gatehouse-admin"

	startTimeout = 2 * time.Minute
	stopTimeout  = 10 * time.Second
	// startAttempts bounds the retries when another process grabs a port
	// between picking it and the server binding it.
	startAttempts = 3
	// serviceCIDR is the cluster-IP range; nothing routes it.
	serviceCIDR = "10.96.0.0/16"
)

// Token is a static bearer token kube-apiserver accepts (--token-auth-file).
type Token struct {
	User   string
	Token  string
	Groups []string
}

// Option configures a Cluster before it starts.
type Option func(*config)

type config struct {
	tokens        []Token
	kwok          bool
	apiserverArgs []string
}

// WithToken makes kube-apiserver accept token as the user user in groups.
// Such a user may do nothing until RBAC grants it something (or a group
// such as system:masters does).
func WithToken(user, token string, groups ...string) Option {
	return func(c *config) { c.tokens = append(c.tokens, Token{User: user, Token: token, Groups: groups}) }
}

// WithKwok also starts kwok (StartKwok) once the API server is ready.
func WithKwok() Option { return func(c *config) { c.kwok = true } }

// WithAPIServerArgs adds kube-apiserver flags after the ones Start sets,
// for example "--authentication-config="+file for OIDC; a flag given twice
// takes the later value.
func WithAPIServerArgs(args ...string) Option {
	return func(c *config) { c.apiserverArgs = append(c.apiserverArgs, args...) }
}

// Cluster is a running etcd and kube-apiserver, and optionally kwok.
type Cluster struct {
	// URL is the API server's base URL, https://127.0.0.1:PORT.
	URL string
	// CAFile is the path of the PEM CA certificate that signed the API
	// server's certificate, and CAPEM its contents.
	CAFile string
	CAPEM  []byte
	// AdminToken authenticates as AdminUser, in system:masters.
	AdminToken string
	// Tokens are the static tokens: the admin's and WithToken's.
	Tokens []Token
	// Dir holds the data, certificates, kubeconfigs and logs.
	Dir string

	paths Paths
	pki   *pki
	admin *kubernetes.Clientset

	mu        sync.Mutex
	procs     []*process // in start order
	kwokAddr  string
	closeOnce sync.Once
	closeErr  error
}

// Start runs etcd and kube-apiserver with their data in dir (which must
// exist, and should be empty) and waits until the API server's /readyz
// answers. ctx bounds the start-up only; the processes run until Close.
func Start(ctx context.Context, dir string, paths Paths, opts ...Option) (_ *Cluster, err error) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	for name, bin := range map[string]string{"kube-apiserver": paths.KubeAPIServer, "etcd": paths.Etcd} {
		if !gotool.IsExecutable(bin) {
			return nil, fmt.Errorf("kubecluster: %s binary %q is missing; build it with `%s`", name, bin, BuildCommand)
		}
	}
	if cfg.kwok && !gotool.IsExecutable(paths.Kwok) {
		return nil, fmt.Errorf("kubecluster: kwok binary %q is missing; build it with `%s`", paths.Kwok, BuildCommand)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()

	c := &Cluster{Dir: dir, paths: paths, AdminToken: rand.Text()}
	defer func() {
		if err != nil {
			if logs := c.Logs(); logs != "" {
				err = fmt.Errorf("%w\n%s", err, logs)
			}
			_ = c.Close()
		}
	}()
	pkiDir := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return nil, fmt.Errorf("kubecluster: %w", err)
	}
	if c.pki, err = newPKI(pkiDir); err != nil {
		return nil, fmt.Errorf("kubecluster: certificates: %w", err)
	}
	c.CAFile, c.CAPEM = c.pki.caFile, c.pki.caPEM
	c.Tokens = append([]Token{{User: AdminUser, Token: c.AdminToken, Groups: []string{"system:masters"}}}, cfg.tokens...)
	tokenFile := filepath.Join(pkiDir, "tokens.csv")
	if err := writeTokens(tokenFile, c.Tokens); err != nil {
		return nil, fmt.Errorf("kubecluster: %w", err)
	}

	etcdURL, err := c.startEtcd(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.startAPIServer(ctx, etcdURL, tokenFile, cfg.apiserverArgs); err != nil {
		return nil, err
	}
	if c.admin, err = kubernetes.NewForConfig(c.RESTConfig(c.AdminToken)); err != nil {
		return nil, fmt.Errorf("kubecluster: client: %w", err)
	}
	if cfg.kwok {
		if err := c.StartKwok(ctx); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func writeTokens(path string, tokens []Token) error {
	var b strings.Builder
	for _, t := range tokens {
		if t.Token == "" || t.User == "" || strings.ContainsAny(t.Token+t.User+strings.Join(t.Groups, ""), ",\"\n") {
			return fmt.Errorf("token for user %q: user and token must be non-empty, without commas, quotes or newlines", t.User)
		}
		// token,user,uid,"group1,group2"
		fmt.Fprintf(&b, "%s,%s,%s,%q\n", t.Token, t.User, t.User, strings.Join(t.Groups, ","))
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

func (c *Cluster) startEtcd(ctx context.Context) (string, error) {
	dataDir := filepath.Join(c.Dir, "etcd")
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(2)
		if err != nil {
			return "", err
		}
		client := "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		p, err := c.run("etcd", c.paths.Etcd,
			"--name=gatehouse",
			"--data-dir="+dataDir,
			"--listen-client-urls="+client,
			"--advertise-client-urls="+client,
			"--listen-peer-urls="+peer,
			"--initial-advertise-peer-urls="+peer,
			"--initial-cluster=gatehouse="+peer,
			"--initial-cluster-state=new",
			"--unsafe-no-fsync",
			"--log-level=warn",
		)
		if err != nil {
			return "", err
		}
		err = p.waitReady(ctx, func(ctx context.Context) bool {
			body, status, err := get(ctx, http.DefaultClient, client+"/health", "")
			return err == nil && status == http.StatusOK && bytes.Contains(body, []byte(`"health":"true"`))
		})
		if err == nil {
			return client, nil
		}
		if attempt < startAttempts && errors.Is(err, errPortTaken) {
			_ = os.RemoveAll(dataDir)
			continue
		}
		return "", err
	}
}

func (c *Cluster) startAPIServer(ctx context.Context, etcdURL, tokenFile string, extra []string) error {
	certDir := filepath.Join(c.Dir, "apiserver")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return fmt.Errorf("kubecluster: %w", err)
	}
	hc := c.httpClient()
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(1)
		if err != nil {
			return err
		}
		url := "https://127.0.0.1:" + strconv.Itoa(ports[0])
		args := []string{
			"--etcd-servers=" + etcdURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(ports[0]),
			"--cert-dir=" + certDir,
			"--tls-cert-file=" + c.pki.serverCert,
			"--tls-private-key-file=" + c.pki.serverKey,
			"--client-ca-file=" + c.pki.caFile,
			"--token-auth-file=" + tokenFile,
			"--authorization-mode=RBAC",
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + c.pki.saPublic,
			"--service-account-signing-key-file=" + c.pki.saPrivate,
			"--service-cluster-ip-range=" + serviceCIDR,
			// Required with a loopback advertise address: the
			// reconciler would publish 127.0.0.1 as the kubernetes
			// service's endpoint.
			"--endpoint-reconciler-type=none",
			// No controller-manager creates service accounts.
			"--disable-admission-plugins=ServiceAccount",
			// kwok's nodes serve exec and logs on 127.0.0.1 with a
			// certificate from the cluster CA; their Hostname address
			// does not resolve.
			"--kubelet-preferred-address-types=InternalIP",
			"--kubelet-certificate-authority=" + c.pki.caFile,
			"--allow-privileged=true",
			"--profiling=false",
			"--enable-priority-and-fairness=false",
		}
		p, err := c.run("kube-apiserver", c.paths.KubeAPIServer, append(args, extra...)...)
		if err != nil {
			return err
		}
		err = p.waitReady(ctx, func(ctx context.Context) bool {
			_, status, err := get(ctx, hc, url+"/readyz", c.AdminToken)
			return err == nil && status == http.StatusOK
		})
		if err == nil {
			c.URL = url
			return nil
		}
		if attempt < startAttempts && errors.Is(err, errPortTaken) {
			continue
		}
		return err
	}
}

// RESTConfig is a client-go configuration for the API server that
// authenticates with token (the AdminToken, or one given WithToken).
func (c *Cluster) RESTConfig(token string) *rest.Config {
	return &rest.Config{
		Host:            c.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.CAPEM},
		QPS:             100,
		Burst:           200,
	}
}

// AdminClient is a clientset authenticated with the AdminToken.
func (c *Cluster) AdminClient() kubernetes.Interface { return c.admin }

// KubeconfigFor writes a kubeconfig that reaches the API server with token
// (its context is current and named "gatehouse") and returns its path. The
// same token always gets the same file.
func (c *Cluster) KubeconfigFor(token string) (string, error) {
	return c.writeKubeconfig(c.URL, token, c.CAPEM)
}

// writeKubeconfig writes a kubeconfig for server, trusting caPEM.
func (c *Cluster) writeKubeconfig(server, token string, caPEM []byte) (string, error) {
	kc := map[string]any{
		"apiVersion":      "v1",
		"kind":            "Config",
		"current-context": "gatehouse",
		"clusters": []any{map[string]any{"name": "gatehouse", "cluster": map[string]any{
			"server": server, "certificate-authority-data": caPEM, // []byte: base64, as kubeconfig wants
		}}},
		"users":    []any{map[string]any{"name": "gatehouse", "user": map[string]any{"token": token}}},
		"contexts": []any{map[string]any{"name": "gatehouse", "context": map[string]any{"cluster": "gatehouse", "user": "gatehouse"}}},
	}
	data, err := json.MarshalIndent(kc, "", "  ") // JSON is YAML
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(server + "\n" + token))
	dir := filepath.Join(c.Dir, "kubeconfig")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("kubecluster: %w", err)
	}
	path := filepath.Join(dir, hex.EncodeToString(sum[:6])+".yaml")
	if err := os.WriteFile(path, append(data, '\n'), 0o600); err != nil {
		return "", fmt.Errorf("kubecluster: write kubeconfig: %w", err)
	}
	return path, nil
}

// httpClient trusts the cluster CA only.
func (c *Cluster) httpClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.pki.caPEM)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 5 * time.Second}
}

// Logs returns the tail of each process's log, for an error report.
func (c *Cluster) Logs() string {
	c.mu.Lock()
	procs := append([]*process(nil), c.procs...)
	c.mu.Unlock()
	var b strings.Builder
	seen := map[string]bool{}
	for _, p := range procs {
		if seen[p.logFile] { // a retried start rewrote it
			continue
		}
		seen[p.logFile] = true
		fmt.Fprintf(&b, "--- %s log (%s) ---\n%s\n", p.name, p.logFile, p.logTail(4<<10))
	}
	return b.String()
}

// Close stops kwok, kube-apiserver and etcd (SIGTERM to each process
// group, SIGKILL after 10 s). It does not remove Dir, which the caller
// owns. It is safe to call more than once.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		procs := c.procs
		c.mu.Unlock()
		var errs []error
		for i := len(procs) - 1; i >= 0; i-- {
			errs = append(errs, procs[i].stop())
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

var errPortTaken = errors.New("port already in use")

// process is one child: etcd, kube-apiserver or kwok.
type process struct {
	name    string
	logFile string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	err     error         // its exit status; read after done
}

// run starts bin as a direct child in its own process group, with a
// minimal environment (etcd reads ETCD_* variables, for one) and its
// output in Dir/<name>.log.
func (c *Cluster) run(name, bin string, args ...string) (*process, error) {
	p := &process{name: name, logFile: filepath.Join(c.Dir, name+".log"), done: make(chan struct{})}
	logf, err := os.OpenFile(p.logFile, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kubecluster: %s log: %w", name, err)
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Dir = c.Dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + c.Dir, "TMPDIR=" + os.TempDir()}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("kubecluster: start %s: %w", name, err)
	}
	p.cmd = cmd
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p, nil
}

// waitReady polls ready until it reports true, the process exits (an
// error wrapping errPortTaken when it could not bind its port), or ctx
// ends.
func (p *process) waitReady(ctx context.Context, ready func(context.Context) bool) error {
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-p.done:
			if strings.Contains(p.logTail(16<<10), "address already in use") {
				return fmt.Errorf("kubecluster: %s: %w", p.name, errPortTaken)
			}
			return fmt.Errorf("kubecluster: %s exited during start-up: %v (log: %s)", p.name, p.err, p.logFile)
		case <-ctx.Done():
			_ = p.stop()
			return fmt.Errorf("kubecluster: %s not ready: %w (log: %s)", p.name, context.Cause(ctx), p.logFile)
		case <-tick.C:
			if ready(ctx) {
				return nil
			}
		}
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after stopTimeout;
// the group includes the commands kwok runs for kubectl exec.
func (p *process) stop() error {
	// Signal the group only while its leader is unreaped: after that its
	// id could belong to someone else.
	pgid := p.cmd.Process.Pid // Setpgid: the group's id is the child's pid
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("kubecluster: %s (pid %d) ignored SIGTERM for %s; killed", p.name, pgid, stopTimeout)
	}
}

func (p *process) logTail(max int64) string {
	f, err := os.Open(p.logFile)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		_, _ = f.Seek(-max, io.SeekEnd)
	}
	data, _ := io.ReadAll(f)
	return strings.TrimSpace(string(data))
}

// get does a GET with an optional bearer token and returns up to 1 MiB of
// the body.
func get(ctx context.Context, hc *http.Client, url, token string) ([]byte, int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, 0, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return body, resp.StatusCode, err
}

// freePorts asks the kernel for n distinct free ports on 127.0.0.1.
// Another process may take one before the server binds it; the starts
// retry in that case.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("kubecluster: find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
