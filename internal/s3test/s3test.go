// Package s3test starts a real S3-compatible object store, SeaweedFS, for
// tests.
//
// A test gets a bucket in one line:
//
//	s := s3test.Start(t)
//	// s.Endpoint() "http://127.0.0.1:PORT", s.Bucket(), s.AccessKey(), s.SecretKey()
//
// The server requires signed requests: it is configured with one identity
// (AccessKey, SecretKey) allowed everything, so anonymous requests are
// refused and a client that signs wrongly fails as it would against AWS.
//
// SeaweedFS is built from the nested module acctest/s3tools, which pins its
// version, into .cache/bin/weed-<version> at the repository root. The first
// build takes about 4 minutes on a cold Go cache (`make s3-binaries` does it
// ahead of the tests); later runs reuse the binary.
//
// Each server runs as a direct child of the test binary (master, volume,
// filer and S3 gateway in one `weed server` process) with its data in a
// temporary directory. tb.Cleanup stops it, and the kernel kills it through
// the parent-death signal if the test binary dies without running cleanups.
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/gatehouse-dev/gatehouse/internal/gotool"
)

const (
	// ToolsDir is the nested module that pins SeaweedFS, relative to the
	// root.
	ToolsDir = "acctest/s3tools"
	// CacheDir is where the binary is built, relative to the root.
	CacheDir = ".cache/bin"
	// BuildCommand builds the binary from the repository root, once.
	BuildCommand = "make s3-binaries"

	weedModule = "github.com/seaweedfs/seaweedfs"
	weedPkg    = "github.com/seaweedfs/seaweedfs/weed"
	buildLimit = 20 * time.Minute

	startTimeout = 90 * time.Second // the S3 API answers within about 10 s
	// stopTimeout: weed server has been seen to ignore SIGTERM for over
	// 10 s; it is killed after this (its writes are on disk by then: a
	// Restart finds every object).
	stopTimeout = 3 * time.Second
	// cleanupTimeout is the wait at cleanup, when nothing is kept.
	cleanupTimeout = 500 * time.Millisecond
	httpTimeout    = 10 * time.Second
	// startAttempts bounds the retries when another process grabs a port
	// between picking it and SeaweedFS binding it.
	startAttempts = 3
	progressEvery = 30 * time.Second
)

// Server is a running SeaweedFS owned by one test.
type Server struct {
	dir      string
	logFile  string
	bin      string
	s3Port   int
	ports    [4]int // master, volume, filer, s3
	bucket   string
	access   string
	secret   string
	endpoint string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // its exit status; read after done
}

// Start builds SeaweedFS if needed, starts `weed server` with the S3 API on
// random ports of 127.0.0.1, waits until the S3 API answers, creates a
// bucket and registers the shutdown with tb.Cleanup.
func Start(tb testing.TB) *Server {
	tb.Helper()
	bin := Binary(tb)
	s := &Server{dir: tb.TempDir(), bin: bin, bucket: "gatehouse-test",
		access: "GH" + strings.ToUpper(rand.Text()[:14]), secret: rand.Text() + rand.Text()}
	s.logFile = filepath.Join(s.dir, "weed.log")
	if err := s.writeConfig(); err != nil {
		tb.Fatalf("s3test: %v", err)
	}
	for attempt := 1; ; attempt++ {
		err := s.pickPorts()
		if err == nil {
			err = s.start()
		}
		if err == nil {
			break
		}
		if attempt < startAttempts && errors.Is(err, errPortTaken) {
			continue
		}
		tb.Fatalf("s3test: %v\n%s", err, s.logTail())
	}
	tb.Cleanup(func() {
		_ = s.stop(cleanupTimeout)
		// weed leaves its master's gRPC socket,
		// seaweedfs-master-grpc-PORT.sock, in its TMPDIR (s.dir here).
		for _, d := range []string{s.dir, os.TempDir()} {
			for _, p := range []int{s.ports[0], s.ports[0] + 10000} {
				_ = os.Remove(filepath.Join(d, "seaweedfs-master-grpc-"+strconv.Itoa(p)+".sock"))
			}
		}
	})
	if err := s.CreateBucket(s.bucket); err != nil {
		tb.Fatalf("s3test: %v\n%s", err, s.logTail())
	}
	if err := s.writable(); err != nil {
		tb.Fatalf("s3test: %v\n%s", err, s.logTail())
	}
	return s
}

// writable waits until an object can be written: the first write waits
// for the volume server to join the master and a volume to grow (about 9 s
// here), which Start takes on rather than the test's first upload.
func (s *Server) writable() error {
	c, err := s.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	const probe = ".s3test-probe"
	if _, err := c.PutObject(ctx, s.bucket, probe, strings.NewReader("ok"), 2, minio.PutObjectOptions{}); err != nil {
		return fmt.Errorf("first write: %w", err)
	}
	return c.RemoveObject(ctx, s.bucket, probe, minio.RemoveObjectOptions{})
}

// Endpoint is the S3 API's base URL, http://127.0.0.1:PORT.
func (s *Server) Endpoint() string { return s.endpoint }

// Bucket is the bucket Start created.
func (s *Server) Bucket() string { return s.bucket }

// AccessKey and SecretKey are the credentials the server accepts.
func (s *Server) AccessKey() string { return s.access }

// SecretKey is the secret of AccessKey.
func (s *Server) SecretKey() string { return s.secret }

// LogFile is the path of SeaweedFS's combined stdout and stderr.
func (s *Server) LogFile() string { return s.logFile }

// Stop stops the server now (an object store outage); Restart brings it
// back on the same ports with the same data.
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	if err := s.stop(stopTimeout); err != nil {
		tb.Logf("s3test: %v", err)
	}
}

// Restart starts a stopped server again on the same ports and data
// directory, and waits until its S3 API answers.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if err := s.start(); err != nil {
		tb.Fatalf("s3test: restart: %v\n%s", err, s.logTail())
	}
	if err := s.writable(); err != nil {
		tb.Fatalf("s3test: restart: %v\n%s", err, s.logTail())
	}
}

// identity is SeaweedFS's -s3.config format.
type identity struct {
	Name        string       `json:"name"`
	Credentials []credential `json:"credentials"`
	Actions     []string     `json:"actions"`
}

type credential struct {
	AccessKey string `json:"accessKey"`
	SecretKey string `json:"secretKey"`
}

// masterTOML is read from weed's working directory (s.dir). A restart
// after SIGKILL (weed server ignores SIGTERM) can look like master state
// loss, which by default freezes volume growth until an operator runs
// volume.growth.resume: writes needing a new volume then hang. A test
// server lifts the freeze at once.
const masterTOML = `[master.volume_growth]
freeze_on_topology_mismatch = false
state_loss_recovery_wait = "1s"
allocation_deferral = "0s"
`

func (s *Server) writeConfig() error {
	if err := os.WriteFile(filepath.Join(s.dir, "master.toml"), []byte(masterTOML), 0o600); err != nil {
		return err
	}
	return s.writeIdentities()
}

// writeIdentities writes the -s3.config file: one identity allowed
// everything. With identities configured, anonymous requests are refused.
func (s *Server) writeIdentities() error {
	conf := map[string]any{"identities": []identity{{
		Name:        "gatehouse",
		Credentials: []credential{{AccessKey: s.access, SecretKey: s.secret}},
		Actions:     []string{"Admin", "Read", "Write", "List", "Tagging"},
	}}}
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.dir, "s3.json"), data, 0o600)
}

func (s *Server) pickPorts() error {
	// The master and the volume server also listen on port+10000 for
	// gRPC: pick ports whose gRPC twin is free too.
	for i := range s.ports {
		for {
			p, err := freePort()
			if err != nil {
				return err
			}
			if p+10000 > 65535 || !portFree(p+10000) {
				continue
			}
			s.ports[i] = p
			break
		}
	}
	s.s3Port = s.ports[3]
	s.endpoint = "http://127.0.0.1:" + strconv.Itoa(s.s3Port)
	return nil
}

var errPortTaken = errors.New("port already in use")

func (s *Server) start() error {
	data := filepath.Join(s.dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open weed log: %w", err)
	}
	defer logf.Close() // the child holds its own descriptor
	logStart, _ := logf.Seek(0, io.SeekEnd)
	p := s.ports
	cmd := exec.Command(s.bin, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-dir="+data,
		"-master.port="+strconv.Itoa(p[0]), "-volume.port="+strconv.Itoa(p[1]),
		"-filer", "-filer.port="+strconv.Itoa(p[2]),
		"-s3", "-s3.port="+strconv.Itoa(p[3]), "-s3.config="+filepath.Join(s.dir, "s3.json"),
		"-master.volumeSizeLimitMB=64", "-volume.max=0",
		// One master: after a restart it waits an election timeout to lead
		// again, and writes hang until it does (10 s by default).
		"-master.electionTimeout=1s",
		// Without this the volume server waits 10 s after SIGTERM.
		"-volume.preStopSeconds=0")
	cmd.Dir = s.dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + s.dir, "TMPDIR=" + s.dir}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start weed: %w", err)
	}
	done := make(chan struct{})
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	go func() {
		s.err = cmd.Wait()
		close(done)
	}()

	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	for {
		select {
		case <-done:
			log, _ := os.ReadFile(s.logFile)
			if int64(len(log)) > logStart && bytes.Contains(log[logStart:], []byte("address already in use")) {
				return errPortTaken
			}
			return fmt.Errorf("weed exited during start-up: %v", s.err)
		case <-deadline.C:
			_ = s.stop(cleanupTimeout)
			return fmt.Errorf("the S3 API of weed did not answer within %s", startTimeout)
		case <-tick.C:
			if s.ready() {
				return nil
			}
		}
	}
}

// ready reports whether the S3 API answers a signed request (a listing
// of the buckets). The S3 port answers before the filer behind it does,
// and after a restart a request can hang for seconds while the filer finds
// the master again: each attempt is bounded.
func (s *Server) ready() bool {
	c, err := s.client()
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = c.ListBuckets(ctx)
	return err == nil
}

func (s *Server) client() (*minio.Client, error) {
	return minio.New(strings.TrimPrefix(s.endpoint, "http://"), &minio.Options{
		Creds: credentials.NewStaticV4(s.access, s.secret, ""), Region: "us-east-1", BucketLookup: minio.BucketLookupPath})
}

// CreateBucket creates a bucket with a signed request, retrying while the
// filer behind the S3 API is still starting.
func (s *Server) CreateBucket(name string) error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := s.signedPut("/" + name)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// CreateLockedBucket creates a bucket with S3 Object Lock enabled (and
// so versioning), as an anchor's bucket is meant to be.
func (s *Server) CreateLockedBucket(name string) error {
	c, err := s.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), httpTimeout)
	defer cancel()
	return c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: "us-east-1", ObjectLocking: true})
}

func (s *Server) signedPut(path string) error {
	ctx, cancel := context.WithTimeout(context.Background(), httpTimeout)
	defer cancel()
	c, err := s.client()
	if err != nil {
		return err
	}
	name := strings.TrimPrefix(path, "/")
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		if ok, _ := c.BucketExists(ctx, name); ok {
			return nil
		}
		return fmt.Errorf("create bucket %s: %w", name, err)
	}
	return nil
}

// stop asks weed to shut down and kills it (its process group) if it takes
// too long; its data is on disk, synced per write, so a Restart finds it.
func (s *Server) stop(timeout time.Duration) error {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return fmt.Errorf("weed (pid %d) ignored SIGTERM for %s; killed", cmd.Process.Pid, timeout)
	}
}

func (s *Server) logTail() string {
	data, err := os.ReadFile(s.logFile)
	if err != nil {
		return ""
	}
	const max = 4 << 10
	if len(data) > max {
		data = data[len(data)-max:]
	}
	return "weed log:\n" + string(data)
}

// freePort asks the kernel for a free port on 127.0.0.1. Another process may
// take it before weed binds it; Start retries in that case.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func portFree(p int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

var (
	binaryMu   sync.Mutex
	binaryPath string
)

// Binary returns the path of the weed binary, building it on first use (see
// Build). The test fails if it cannot be built.
func Binary(tb testing.TB) string {
	tb.Helper()
	binaryMu.Lock()
	defer binaryMu.Unlock()
	if binaryPath != "" {
		return binaryPath
	}
	root, err := gotool.FindRootFromWD()
	if err != nil {
		tb.Fatalf("s3test: %v", err)
	}
	path, err := Build(context.Background(), root, tbWriter{tb})
	if err != nil {
		tb.Fatalf("s3test: %v", err)
	}
	binaryPath = path
	return path
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Logf("s3test: %s", strings.TrimSpace(string(p)))
	return len(p), nil
}

// Build builds weed into <root>/.cache/bin/weed-<version>, the version
// acctest/s3tools/go.mod requires, unless it is there already, and returns
// its path. It prints progress lines to progress (which may be nil). A file
// lock serialises builds across processes (the test binaries `go test
// ./...` runs in parallel), and the binary appears under its final name only
// once complete, so a half-written one is never run. Building needs the go
// command and the Go module proxy, or a module cache that already holds
// acctest/s3tools's modules.
func Build(ctx context.Context, root string, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	tools := filepath.Join(root, filepath.FromSlash(ToolsDir))
	version, err := gotool.RequiredVersion(filepath.Join(tools, "go.mod"), weedModule)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, filepath.FromSlash(CacheDir))
	bin := filepath.Join(dir, "weed-"+version)
	if gotool.IsExecutable(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	unlock, err := gotool.Lock(ctx, bin+".lock", func() {
		fmt.Fprintf(progress, "waiting for another process to finish building weed %s (%s.lock)\n", version, bin)
	})
	if err != nil {
		return "", err
	}
	defer unlock()
	if gotool.IsExecutable(bin) { // another process built it while we waited
		return bin, nil
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building SeaweedFS needs the go command on PATH: %w", err)
	}
	tmp := fmt.Sprintf("%s.tmp-%d", bin, os.Getpid())
	defer os.Remove(tmp)

	fmt.Fprintf(progress, "building SeaweedFS (weed) %s into %s (first time only, about 4 minutes on a cold Go cache; `%s` does it ahead)...\n", version, bin, BuildCommand)
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, buildLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "build", "-trimpath", "-o", tmp, weedPkg)
	cmd.Dir = tools
	// A static binary; GOWORK=off so a go.work above the repository
	// cannot pull the nested module into a workspace.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start go build: %w", err)
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	for finished := false; !finished; {
		select {
		case <-tick.C:
			fmt.Fprintf(progress, "still building weed (%s)\n", time.Since(start).Round(time.Second))
		case err = <-waitErr:
			finished = true
		}
	}
	if err != nil {
		tail := out.Bytes()
		if len(tail) > 4<<10 {
			tail = tail[len(tail)-4<<10:]
		}
		return "", fmt.Errorf("building SeaweedFS %s failed: %w\n"+
			"(cd %s && GOWORK=off CGO_ENABLED=0 go build -o weed %s) needs the Go module proxy, or a module cache that already holds the modules of %s:\n%s",
			version, err, ToolsDir, weedPkg, ToolsDir, tail)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("install the weed binary: %w", err)
	}
	fmt.Fprintf(progress, "built weed %s in %s\n", version, time.Since(start).Round(time.Second))
	return bin, nil
}
