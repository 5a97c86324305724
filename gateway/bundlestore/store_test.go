package bundlestore

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
)

// build signs the quickstart policy at a revision.
func build(t testing.TB, priv ed25519.PrivateKey, rev uint64) []byte {
	t.Helper()
	res, diags := hclconfig.Load("../../examples/quickstart")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	p, err := bundle.NewPayload(*res.Model, bundle.BuildOptions{Revision: rev, CreatedAt: time.Unix(1764000000, 0), Compiler: "test"})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := bundle.EncodePayload(p)
	if err != nil {
		t.Fatal(err)
	}
	data, err := bundle.Sign(raw, priv)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func key(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	k, err := bundle.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestApply(t *testing.T) {
	k := key(t)
	s := New(bundle.NewKeyring(k.Public().(ed25519.PublicKey)), t.TempDir())
	if s.Current() != nil {
		t.Fatal("a new store has an active bundle")
	}
	a, err := s.Apply(build(t, k, 10), "test")
	if err != nil || a.Revision != 10 || s.Current() != a {
		t.Fatalf("Apply: %v, %+v", err, a)
	}
	if _, err := s.Apply(build(t, k, 10), "test"); !errors.Is(err, ErrUnchanged) {
		t.Errorf("the same bundle again: %v", err)
	}
	// A rollback, a tampered bundle and a foreign key are refused, and
	// the active bundle stays.
	if _, err := s.Apply(build(t, k, 9), "test"); !errors.Is(err, bundle.ErrRollback) {
		t.Errorf("rollback: %v", err)
	}
	tampered := build(t, k, 11)
	tampered[len(tampered)/2] ^= 1
	if _, err := s.Apply(tampered, "test"); err == nil {
		t.Error("a tampered bundle was applied")
	}
	if _, err := s.Apply(build(t, key(t), 12), "test"); !errors.Is(err, bundle.ErrUnknownKey) {
		t.Errorf("foreign key: %v", err)
	}
	if s.Current().Revision != 10 || s.Stats.ReloadFailures.Load() != 3 {
		t.Errorf("after refusals: revision %d, failures %d", s.Current().Revision, s.Stats.ReloadFailures.Load())
	}
	if _, err := s.Apply(build(t, k, 11), "test"); err != nil || s.Current().Revision != 11 {
		t.Errorf("a newer bundle: %v", err)
	}
}

// TestPersistedSurvivesRestart: a restarted gateway comes up with the last
// good bundle, and refuses a source older than it.
func TestPersistedSurvivesRestart(t *testing.T) {
	k := key(t)
	kr := bundle.NewKeyring(k.Public().(ed25519.PublicKey))
	dir := t.TempDir()
	s := New(kr, dir)
	if _, err := s.Apply(build(t, k, 20), "test"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(s.PersistedPath())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("persisted copy: %v %v", fi, err)
	}
	restarted := New(kr, dir)
	a, err := restarted.LoadPersisted()
	if err != nil || a.Revision != 20 {
		t.Fatalf("LoadPersisted: %v %+v", err, a)
	}
	if _, err := restarted.Apply(build(t, k, 19), "source"); !errors.Is(err, bundle.ErrRollback) {
		t.Errorf("an older source after restart: %v", err)
	}
}

func TestWatchFile(t *testing.T) {
	k := key(t)
	s := New(bundle.NewKeyring(k.Public().(ed25519.PublicKey)), "")
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.bundle")
	write := func(data []byte) {
		tmp := filepath.Join(dir, ".tmp")
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(build(t, k, 1))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.WatchFile(ctx, path, 200*time.Millisecond) }()
	defer func() { cancel(); <-done }()

	waitRevision := func(want uint64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if a := s.Current(); a != nil && a.Revision == want {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("revision %d never became active (have %+v)", want, s.Current())
	}
	waitRevision(1)
	write(build(t, k, 2))
	waitRevision(2)
	bad := build(t, k, 3)
	bad[100] ^= 1
	write(bad)
	time.Sleep(500 * time.Millisecond)
	waitRevision(2)
	write(build(t, k, 4))
	waitRevision(4)
}

// downFloor is a shared floor whose database is down until up is set.
type downFloor struct {
	up    atomic.Bool
	calls atomic.Int64
}

func (f *downFloor) Admit(context.Context, uint64, string) error {
	f.calls.Add(1)
	if !f.up.Load() {
		return fmt.Errorf("%w: connection refused", ErrFloorUnavailable)
	}
	return nil
}
func (f *downFloor) Close() {}

// TestFloorUnavailable: a bundle that cannot be checked against the
// shared floor is refused (fail closed), and the file watcher tries the
// same file again once the floor is back, rather than wait for the file to
// change.
func TestFloorUnavailable(t *testing.T) {
	k := key(t)
	f := &downFloor{}
	s := New(bundle.NewKeyring(k.Public().(ed25519.PublicKey)), t.TempDir(), WithFloor(f))
	data := build(t, k, 10)
	if _, err := s.Apply(data, "test"); !errors.Is(err, ErrFloorUnavailable) || s.Current() != nil {
		t.Fatalf("Apply with the floor down: %v, active %v", err, s.Current())
	}
	path := filepath.Join(t.TempDir(), "policy.bundle")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); s.WatchFile(ctx, path, 20*time.Millisecond) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "the watcher to try the file three times", func() bool { return f.calls.Load() >= 4 })
	if s.Current() != nil {
		t.Fatal("activated while the floor was down")
	}
	f.up.Store(true)
	waitFor(t, "the unchanged file to be tried again once the floor was back", func() bool { return s.Current() != nil })
}

// TestWatchFileBoundsTheRead: whoever can write the bundle's directory
// cannot make the gateway read without end. A file past the bundle size
// limit is refused without being read into memory, and a file that is not
// a regular file (a symlink to /dev/zero, a FIFO) is refused without being
// read at all.
func TestWatchFileBoundsTheRead(t *testing.T) {
	k := key(t)
	s := New(bundle.NewKeyring(k.Public().(ed25519.PublicKey)), t.TempDir())
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.bundle")
	// Sparse: it takes no disk, but reading it takes its size in memory.
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(4 * bundle.MaxBundleSize); err != nil {
		t.Fatal(err)
	}
	f.Close()
	watch := func() {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		failures := s.Stats.ReloadFailures.Load()
		go func() { defer close(done); s.WatchFile(ctx, path, time.Hour) }()
		waitFor(t, "the file to be refused", func() bool { return s.Stats.ReloadFailures.Load() > failures })
		cancel()
		<-done
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	watch()
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > bundle.MaxBundleSize {
		t.Fatalf("a %d byte bundle file was read: %d bytes allocated", 4*bundle.MaxBundleSize, n)
	}
	if e := s.Stats.LastError.Load(); e == nil || !strings.Contains(*e, "larger than") {
		t.Errorf("last error: %v", e)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", path); err != nil {
		t.Fatal(err)
	}
	watch()
	if e := s.Stats.LastError.Load(); e == nil || !strings.Contains(*e, "not a regular file") {
		t.Errorf("last error: %v", e)
	}
	// A FIFO with no writer: opening it for reading would block.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	watch()
	if e := s.Stats.LastError.Load(); e == nil || !strings.Contains(*e, "not a regular file") {
		t.Errorf("last error: %v", e)
	}
	if s.Current() != nil {
		t.Fatal("a bundle was activated")
	}
}
