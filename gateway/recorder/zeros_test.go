package recorder

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// journalState reads the journal's write offset and zeroed end.
func journalState(r *Recorder) (off, zeroed, chunk int64) {
	r.j.fmu.Lock()
	defer r.j.fmu.Unlock()
	return r.j.off, r.j.zeroed, r.j.chunk
}

// Batches overwrite zeros written ahead of them: the file is its entries
// and then zeros up to a chunk boundary, a crash recovers every
// acknowledged event from that layout, and a checkpoint gives the space
// back.
func TestJournalZerosAhead(t *testing.T) {
	r, kr := newRec(t)
	if _, _, chunk := journalState(r); chunk == 0 {
		t.Skip("the test's temporary directory is on tmpfs, where the journal appends")
	}
	s, err := r.Start("z", Event{})
	if err != nil {
		t.Fatal(err)
	}
	// Enough entries to cross a chunk boundary at least once.
	sql := "SELECT " + strings.Repeat("x", 400)
	for i := 0; int64(i)*450 < 2*zeroChunk; i++ {
		if _, err := s.Record(Event{Type: TypeStatement, SQL: sql}); err != nil {
			t.Fatal(err)
		}
	}
	jp := filepath.Join(r.dir, JournalName)
	data, err := os.ReadFile(jp)
	if err != nil {
		t.Fatal(err)
	}
	off, zeroed, _ := journalState(r)
	if int64(len(data)) != zeroed || zeroed%zeroChunk != 0 || zeroed <= off {
		t.Fatalf("journal file %d bytes, entries end at %d, zeroed to %d: want zeros to the next %d-byte boundary", len(data), off, zeroed, zeroChunk)
	}
	if !bytes.Equal(data[off:], make([]byte, zeroed-off)) {
		t.Fatal("the journal past its entries is not zeros")
	}
	if bytes.IndexByte(data[:off], 0) >= 0 {
		t.Fatal("a zero byte among the journal's entries")
	}
	full, _ := os.ReadFile(s.Path)

	// A power loss that kept the journal but not the recording's tail.
	ls := lines(t, s.Path)
	write(t, s.Path, ls[:3])
	crash(r)
	r2, err := Open(r.dir, r.key)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(s.Path)
	if !bytes.HasPrefix(got, full) {
		t.Fatalf("recovered recording is not the acknowledged one: %d bytes, want a prefix of %d", len(got), len(full))
	}
	crashSealedAfter(t, s.Path, full, kr)
	if err := r2.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(jp); fi.Size() != 0 {
		t.Errorf("journal holds %d bytes after Close", fi.Size())
	}
}

// When a chunk of zeros does not fit on the disk, the batch stays written,
// the zeros are given back, and the journal appends: nothing acknowledged
// is lost, and a full disk is not made fuller.
func TestJournalZerosAheadOnAFullDisk(t *testing.T) {
	dir := smallTmpfs(t)
	k, _ := bundle.GenerateKey()
	r, err := Open(filepath.Join(dir, "rec"), k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	kr := bundle.NewKeyring(k.Public().(ed25519.PublicKey))
	// tmpfs gets no zeros ahead; force a small chunk to reach the path.
	const chunk = 16 << 10
	r.j.fmu.Lock()
	r.j.chunk = chunk
	r.j.fmu.Unlock()
	s, err := r.Start("f", Event{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Record(Event{Type: TypeStatement, SQL: "SELECT 1"}); err != nil {
		t.Fatal(err)
	}
	if _, zeroed, _ := journalState(r); zeroed != chunk {
		t.Fatalf("setup: zeroed to %d, want %d", zeroed, chunk)
	}
	// Leave 24 KiB: the recording's writes fit, the next chunk of zeros
	// does not.
	fill(t, dir)
	filler := filepath.Join(dir, "filler")
	fi, err := os.Stat(filler)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filler, fi.Size()-24<<10); err != nil {
		t.Fatal(err)
	}
	sql := "SELECT " + strings.Repeat("y", 2000)
	for i := 0; ; i++ {
		off, zeroed, _ := journalState(r)
		if off > chunk {
			if zeroed != off {
				t.Fatalf("entries end at %d and the file was zeroed to %d on a disk without room for a chunk", off, zeroed)
			}
			break
		}
		if i > 20 {
			t.Fatalf("entries at %d after %d events: never crossed the chunk", off, i)
		}
		if _, err := s.Record(Event{Type: TypeStatement, SQL: sql}); err != nil {
			t.Fatalf("event %d on a disk without room for a chunk of zeros: %v", i, err)
		}
	}
	// The journal appends from here, and says so in its size.
	if _, err := s.Record(Event{Type: TypeStatement, SQL: "SELECT 2"}); err != nil {
		t.Fatal(err)
	}
	off, zeroed, _ := journalState(r)
	st, _ := os.Stat(filepath.Join(r.dir, JournalName))
	if st.Size() != off || zeroed != off {
		t.Fatalf("journal file %d bytes, entries end at %d, zeroed to %d: want an appended journal", st.Size(), off, zeroed)
	}
	full, _ := os.ReadFile(s.Path)
	ls := lines(t, s.Path)
	write(t, s.Path, ls[:2])
	crash(r)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(r.dir, r.key)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	crashSealedAfter(t, s.Path, full, kr)
}

// BenchmarkDurableRecord is one session's durable event (write, journal,
// fdatasync), with the journal appending, with zeros written ahead, and
// with zeros ahead and direct I/O (the default where the file system has
// it). The mode is set before anything is written, so the direct writer's
// block under the end is empty as it assumes. sys-µs/op is the process's
// kernel CPU per event.
func BenchmarkDurableRecord(b *testing.B) {
	for _, mode := range []string{"append", "zeros-ahead", "zeros-ahead-direct"} {
		b.Run(mode, func(b *testing.B) {
			k, err := bundle.GenerateKey()
			if err != nil {
				b.Fatal(err)
			}
			r, err := Open(b.TempDir(), k)
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			r.j.fmu.Lock()
			if mode == "append" {
				r.j.chunk = 0
			} else if r.j.chunk == 0 {
				r.j.fmu.Unlock()
				b.Skip("tmpfs: the journal appends")
			}
			if r.j.direct != (mode == "zeros-ahead-direct") {
				if !setDirect(r.j.f, !r.j.direct) {
					r.j.fmu.Unlock()
					b.Skip("this file system refuses direct I/O")
				}
				r.j.direct = !r.j.direct
			}
			r.j.fmu.Unlock()
			s, err := r.Start("bench", Event{})
			if err != nil {
				b.Fatal(err)
			}
			ev := Event{Type: TypeStatement, SQL: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213", Time: time.Unix(1, 0)}
			var ru0, ru1 syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			n := 0
			for b.Loop() {
				if _, err := s.Record(ev); err != nil {
					b.Fatal(err)
				}
				n++
			}
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			sys := time.Duration(ru1.Stime.Nano() - ru0.Stime.Nano())
			b.ReportMetric(float64(sys.Microseconds())/float64(max(n, 1)), "sys-µs/op")
			if err := s.End("done"); err != nil {
				b.Fatal(fmt.Errorf("end: %w", err))
			}
		})
	}
}
