package recorder

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// An anchor keeps a copy of the ledger's entries where the gateway's host
// cannot rewrite them: a file on write-once or append-only storage (a WORM
// volume, a file with chattr +a on another host's mount), or an HTTP(S)
// service that appends what it is sent and answers GET with all of it.
// Every entry carries the hash of the one before it, so one anchored entry
// pins the whole ledger before it: whoever rewrites a recording and the
// ledger, even re-signing both with the recorder key, leaves ledger
// entries that differ from the anchor's, and `audit verify --anchor`
// says so.
//
// Export is asynchronous. Entries are sent once durable, in batches, by
// one goroutine the recorder owns; an anchor that cannot be reached holds
// no session up, is retried with a backoff, and is logged. What was sent
// is remembered in ledger.anchored, so a restart sends only the rest.
// Between an entry's write and its export (normally milliseconds; longer
// while the anchor is down) it is protected by the ledger alone.

// Anchor receives ledger entries.
type Anchor interface {
	// Append stores whole ledger lines (each with its newline), in order,
	// and returns nil only once they are durable.
	Append(ctx context.Context, lines []byte) error
	// String names the anchor, without secrets.
	String() string
}

// IsURL reports whether an anchor is an HTTP(S) endpoint rather than a
// file.
func IsURL(anchor string) bool {
	return strings.HasPrefix(anchor, "https://") || strings.HasPrefix(anchor, "http://")
}

// NewFileAnchor appends to a file (created 0640), with an fdatasync per
// batch. The file is meant to live on storage the gateway's host can
// append to but not rewrite.
func NewFileAnchor(path string) Anchor { return &fileAnchor{path: path} }

type fileAnchor struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

func (a *fileAnchor) String() string { return a.path }

func (a *fileAnchor) Append(_ context.Context, lines []byte) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		f, err := os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return fmt.Errorf("anchor: %w", err)
		}
		a.f = f
	}
	_, err := a.f.Write(lines)
	if err == nil {
		err = unix.Fdatasync(int(a.f.Fd()))
	}
	if err != nil {
		// Open it again next time: the storage may have come back.
		a.f.Close()
		a.f = nil
		return fmt.Errorf("anchor %s: %w", a.path, err)
	}
	return nil
}

// NewHTTPAnchor POSTs batches of entries (Content-Type application/jsonl)
// to url, with Authorization: Bearer token when token is set; any 2xx
// answer means they are stored. client nil: a client with no timeout of
// its own (the exporter bounds every request).
func NewHTTPAnchor(url string, client *http.Client, token string) Anchor {
	if client == nil {
		client = &http.Client{}
	}
	return &httpAnchor{url: url, client: client, token: token}
}

type httpAnchor struct {
	url    string
	client *http.Client
	token  string
}

func (a *httpAnchor) String() string { return a.url }

func (a *httpAnchor) Append(ctx context.Context, lines []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url, bytes.NewReader(lines))
	if err != nil {
		return fmt.Errorf("anchor: %w", err)
	}
	req.Header.Set("Content-Type", "application/jsonl")
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("anchor: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("anchor %s: %s", a.url, resp.Status)
	}
	return nil
}

// MaxAnchorBytes bounds an anchor's copy read by ReadAnchor.
const MaxAnchorBytes = 1 << 30

// ReadAnchor fetches an anchor's copy of the ledger: a file, or an
// HTTP(S) endpoint's answer to GET (with Authorization: Bearer token when
// token is set).
func ReadAnchor(ctx context.Context, source string, client *http.Client, token string) ([]byte, error) {
	var r io.Reader
	if IsURL(source) {
		if client == nil {
			client = &http.Client{Timeout: time.Minute}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, source, nil)
		if err != nil {
			return nil, fmt.Errorf("anchor: %w", err)
		}
		req.Header.Set("Accept", "application/jsonl")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("anchor: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("anchor %s: %s", source, resp.Status)
		}
		r = resp.Body
	} else {
		f, err := os.Open(source)
		if err != nil {
			return nil, fmt.Errorf("anchor: %w", err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, MaxAnchorBytes+1))
	if err != nil {
		return nil, fmt.Errorf("anchor %s: %w", source, err)
	}
	if len(b) > MaxAnchorBytes {
		return nil, fmt.Errorf("anchor %s: more than %d bytes", source, MaxAnchorBytes)
	}
	return b, nil
}

// cursorName is where the recorder remembers what the anchor was sent.
const cursorName = "ledger.anchored"

// exportCursor is the last ledger entry an anchor acknowledged.
type exportCursor struct {
	Anchor string `json:"anchor"`
	Index  uint64 `json:"index"`
}

// readCursor reads what was sent to this anchor. Another anchor (the
// configuration changed) starts from the beginning: it gets the whole
// ledger.
func readCursor(dir string, a Anchor) exportCursor {
	c := exportCursor{Anchor: a.String()}
	b, err := os.ReadFile(filepath.Join(dir, cursorName))
	if err != nil {
		return c
	}
	var saved exportCursor
	if json.Unmarshal(b, &saved) == nil && saved.Anchor == c.Anchor {
		c.Index = saved.Index
	}
	return c
}

// maxBatch bounds one export's bytes.
const maxBatch = 1 << 20

// exporter sends durable ledger entries to the anchor.
type exporter struct {
	r *Recorder
	a Anchor

	wake chan struct{}

	// mu makes exports one at a time (the goroutine's and Close's flush).
	mu      sync.Mutex
	cursor  exportCursor
	offset  int64 // where the entry after cursor.Index begins
	rd      *os.File
	failing bool
}

func newExporter(r *Recorder, c exportCursor, offset int64) *exporter {
	r.Stats.Anchored.Store(c.Index)
	return &exporter{r: r, a: r.anchor, cursor: c, offset: offset, wake: make(chan struct{}, 1)}
}

// AnchorBehind is how many durable ledger entries the anchor lacks; false
// without an anchor.
func (r *Recorder) AnchorBehind() (uint64, bool) {
	if r.exp == nil {
		return 0, false
	}
	last, _ := r.l.durableEnd()
	anchored := r.Stats.Anchored.Load()
	if anchored >= last {
		return 0, true
	}
	return last - anchored, true
}

// kick says that entries became durable. It never blocks.
func (e *exporter) kick() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// run exports whenever kicked, until stop is closed; ctx bounds the
// requests (it ends only if an export outlives the stop's grace). After a
// failure it waits (1s, doubling up to a minute) rather than trying at
// every new entry.
func (e *exporter) run(ctx context.Context, stop <-chan struct{}) {
	var backoff time.Duration
	for {
		if backoff == 0 {
			select {
			case <-stop:
				return
			case <-e.wake:
			}
		} else {
			t := time.NewTimer(backoff)
			select {
			case <-stop:
				t.Stop()
				return
			case <-t.C:
			}
		}
		if err := e.export(ctx); err != nil {
			e.r.Stats.AnchorFailures.Add(1)
			backoff = min(max(2*backoff, time.Second), time.Minute)
			if ctx.Err() == nil {
				e.note(err)
			}
			continue
		}
		backoff = 0
	}
}

// note logs the first failure and the recovery, not every retry.
func (e *exporter) note(err error) {
	if err != nil && !e.failing {
		e.r.log.Error("the ledger's anchor cannot be reached; entries wait on this host until it can (retrying)", "anchor", e.a.String(), "err", err)
	}
	if err == nil && e.failing {
		e.r.log.Info("the ledger's anchor is reachable again", "anchor", e.a.String(), "anchored", e.cursor.Index)
	}
	e.failing = err != nil
}

// export sends every durable entry the anchor lacks, a batch at a time.
func (e *exporter) export(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for {
		last, end := e.r.l.durableEnd()
		if e.cursor.Index >= last || e.offset >= end {
			return nil
		}
		if e.rd == nil {
			f, err := os.Open(e.r.l.path)
			if err != nil {
				return fmt.Errorf("recorder: read the ledger to anchor it: %w", err)
			}
			e.rd = f
		}
		n := min(end-e.offset, int64(maxBatch))
		buf := make([]byte, n)
		if _, err := e.rd.ReadAt(buf, e.offset); err != nil {
			return fmt.Errorf("recorder: read the ledger to anchor it: %w", err)
		}
		if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
			buf = buf[:i+1]
		} else {
			// One entry longer than a batch: send it whole.
			buf = make([]byte, end-e.offset)
			if _, err := e.rd.ReadAt(buf, e.offset); err != nil {
				return fmt.Errorf("recorder: read the ledger to anchor it: %w", err)
			}
			buf = buf[:bytes.LastIndexByte(buf, '\n')+1]
		}
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := e.a.Append(actx, buf)
		cancel()
		if err != nil {
			return err
		}
		e.cursor.Index += uint64(bytes.Count(buf, []byte("\n")))
		e.offset += int64(len(buf))
		e.r.Stats.Anchored.Store(e.cursor.Index)
		if err := e.saveCursor(); err != nil {
			e.r.log.Warn("cannot remember what the anchor was sent; a restart sends it again", "err", err)
		}
		if e.failing {
			e.note(nil)
		}
	}
}

// saveCursor remembers what the anchor acknowledged. It is replaced
// whole (rename) but not synced: a cursor a crash takes back only makes
// the next start send some entries again, which an anchor holds twice
// harmlessly (audit verify compares entries by index).
func (e *exporter) saveCursor() error {
	b, err := json.Marshal(e.cursor)
	if err != nil {
		return err
	}
	path := filepath.Join(e.r.dir, cursorName)
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// flush sends what the anchor lacks at Close, for a few seconds at most.
func (e *exporter) flush() {
	if e == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.export(ctx); err != nil {
		last, _ := e.r.l.durableEnd()
		e.r.log.Warn("the anchor lacks the ledger's last entries; the next start sends them", "anchor", e.a.String(), "anchored", e.cursor.Index, "last_entry", last, "err", err)
	}
	e.mu.Lock()
	if e.rd != nil {
		e.rd.Close()
		e.rd = nil
	}
	e.mu.Unlock()
}

// startBackground starts the goroutines the recorder owns: the periodic
// checkpoint and the anchor's exporter. stopBG stops them and waits.
func (r *Recorder) startBackground() {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if r.interval > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(r.interval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if err := r.Checkpoint(); err != nil {
						r.log.Error("ledger checkpoint failed", "err", err)
					}
				}
			}
		}()
	}
	// The exporter is not cut off mid-request: an entry the anchor stored
	// but the exporter did not see acknowledged would be sent again.
	// Close lets a request in flight finish, for a few seconds.
	expCtx, expCancel := context.WithCancel(context.Background())
	stopExp := make(chan struct{})
	expDone := make(chan struct{})
	if r.exp != nil {
		go func() { defer close(expDone); r.exp.run(expCtx, stopExp) }()
		r.exp.kick() // what the last run left, and this one's open entry
	} else {
		close(expDone)
	}
	r.stopBG = sync.OnceFunc(func() {
		cancel()
		close(stopExp)
		select {
		case <-expDone:
		case <-time.After(5 * time.Second):
			expCancel()
			<-expDone
		}
		expCancel()
		wg.Wait()
	})
}
