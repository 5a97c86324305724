// Package impact replays recorded traffic under two policies and reports
// the decisions that would change: what a policy change would do to the
// requests services actually make, before it is merged.
//
// Traffic is a list of Records: one per caller, resource and request
// shape, with a count. It comes from a gateway's recordings (Read) or from
// an exported traffic file (ReadFile), which holds only what a replay
// needs: no result rows, no masked values, and SQL constants replaced by
// placeholders unless they were kept on purpose.
package impact

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

// Record is one caller's requests of one shape to one resource: a line of
// an exported traffic file.
type Record struct {
	// The caller: its token's issuer and subject, and its groups.
	Issuer  string `json:"issuer"`
	Subject string `json:"subject"`
	// Groups are the groups the gateway resolved (the token's, with the
	// provider's prefix, plus the identity's extra groups).
	Groups []string `json:"groups"`
	// TokenGroups are the token's own groups claim, as the token carried
	// it. Recordings older than this field lack it; the replay then takes
	// Groups for the token's groups and says that it is approximate.
	TokenGroups []string `json:"token_groups"`
	// Provider names the identity provider that vouched for the token,
	// and Claims are the token's claims identities' match predicates
	// name (both recorded since token groups were).
	Provider string         `json:"provider,omitempty"`
	Claims   map[string]any `json:"claims,omitempty"`
	// Identity is the identity the caller resolved to when recorded.
	Identity string `json:"identity,omitempty"`
	Resource string `json:"resource"`
	// Kind is the resource's kind (postgres, ssh_host, kubernetes_cluster).
	Kind string `json:"kind"`
	// Request is the request as the gateway decided it (celpolicy's JSON
	// of the kind's request), with SQL texts normalised unless constants
	// were kept.
	Request json.RawMessage `json:"request"`
	// Example is the request for people: normalised SQL, a command line,
	// an API call.
	Example string `json:"example"`
	// Effect is the decision the gateway recorded.
	Effect string `json:"effect"`
	// Count is how many requests this record stands for, First and Last
	// when the first and the last were made.
	Count int64     `json:"count"`
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
}

// Approximate reports whether the caller's token groups were not recorded.
func (r *Record) Approximate() bool { return r.TokenGroups == nil }

// shape is what makes two records one: the caller, the resource and the
// request (normalised), which alone decide the outcome.
func (r *Record) shape() string {
	h := sha256.New()
	claims, _ := json.Marshal(r.Claims) // map keys sorted
	for _, s := range []string{r.Issuer, r.Subject, strings.Join(r.Groups, "\x01"), strings.Join(r.TokenGroups, "\x01"),
		fmt.Sprint(r.TokenGroups == nil), r.Provider, string(claims), r.Identity, r.Resource, r.Kind, string(r.Request)} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Options say what Read keeps.
type Options struct {
	// Since drops requests made before it (zero: keep all).
	Since time.Time
	// KeepConstants keeps SQL texts as they were sent. Off, every SQL
	// text is normalised (constants become $1, $2, ...): literals in
	// recordings can be personal data.
	KeepConstants bool
	// Progress, when set, hears about every recording read.
	Progress func(path string, requests int64)
}

// Traffic is recorded traffic, aggregated.
type Traffic struct {
	Records []*Record
	// Requests counts the requests read; Sessions the recordings.
	Requests int64
	Sessions int
	// Skipped counts requests that could not be read for replay, by why.
	Skipped map[string]int64
	index   map[string]*Record
}

func newTraffic() *Traffic {
	return &Traffic{Skipped: map[string]int64{}, index: map[string]*Record{}}
}

func (t *Traffic) add(r *Record) {
	key := r.shape()
	if have, ok := t.index[key]; ok {
		have.Count += r.Count
		if r.First.Before(have.First) {
			have.First = r.First
		}
		if r.Last.After(have.Last) {
			have.Last = r.Last
		}
		return
	}
	t.index[key] = r
	t.Records = append(t.Records, r)
}

func (t *Traffic) sort() {
	sort.SliceStable(t.Records, func(i, j int) bool {
		a, b := t.Records[i], t.Records[j]
		if a.Identity != b.Identity {
			return a.Identity < b.Identity
		}
		if a.Resource != b.Resource {
			return a.Resource < b.Resource
		}
		return a.Example < b.Example
	})
}

// Read reads the recordings under each source: a gateway's data
// directory, its recordings directory, or recording files. The recordings
// of several gateways can be read together.
func Read(sources []string, o Options) (*Traffic, error) {
	t := newTraffic()
	for _, src := range sources {
		files, err := recordingFiles(src)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			n, err := t.readRecording(f, o)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			if o.Progress != nil {
				o.Progress(f, n)
			}
		}
	}
	t.sort()
	return t, nil
}

// recordingFiles lists the recordings a source names.
func recordingFiles(src string) ([]string, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return []string{src}, nil
	}
	dir := src
	if sub := filepath.Join(src, "recordings"); isDir(sub) {
		dir = sub // a data directory
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	if err != nil {
		return nil, err
	}
	out := files[:0]
	for _, f := range files {
		if base := filepath.Base(f); base != recorder.LedgerName {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no recordings (give a gateway's data directory, its recordings directory, or recording files)", src)
	}
	return out, nil
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// header is who a recording's requests come from; a recheck (a new
// bundle revision judged the session) may change it.
type header struct {
	issuer, subject, identity, resource, protocol, provider string
	groups, tokenGroups                                     []string
	hasTokenGroups                                          bool
	claims                                                  map[string]any
}

func (t *Traffic) readRecording(path string, o Options) (int64, error) {
	evs, err := recorder.ReadEvents(path)
	if err != nil {
		return 0, err
	}
	if len(evs) == 0 || evs[0].Type != recorder.TypeStart {
		t.Skipped["recordings without a session_start"]++
		return 0, nil
	}
	t.Sessions++
	var h header
	var n int64
	for i := range evs {
		ev := &evs[i]
		switch ev.Type {
		case recorder.TypeStart, recorder.TypeRecheck:
			h.issuer, h.subject, h.identity, h.groups = ev.Issuer, ev.Subject, ev.Identity, ev.Groups
			h.provider, h.claims = ev.Provider, nil
			if len(ev.Claims) > 0 {
				_ = json.Unmarshal(ev.Claims, &h.claims)
			}
			h.tokenGroups, h.hasTokenGroups = nil, false
			if len(ev.TokenGroups) > 0 && json.Unmarshal(ev.TokenGroups, &h.tokenGroups) == nil {
				h.hasTokenGroups = true
				if h.tokenGroups == nil {
					h.tokenGroups = []string{}
				}
			}
			if ev.Resource != "" {
				h.resource = ev.Resource
			}
			if ev.Protocol != "" {
				h.protocol = ev.Protocol
			} else if h.protocol == "" {
				h.protocol = "postgres" // format 1 recorded PostgreSQL only
			}
		case recorder.TypeRequest, recorder.TypeStatement:
			if !o.Since.IsZero() && ev.Time.Before(o.Since) {
				continue
			}
			n++
			t.Requests++
			r, why := recordOf(&h, ev, o)
			if r == nil {
				t.Skipped[why]++
				continue
			}
			t.add(r)
		}
	}
	return n, nil
}

// kindOfProtocol is the resource kind a protocol's recordings are about.
func kindOfProtocol(protocol string) string {
	switch protocol {
	case "ssh":
		return bundle.KindSSHHost
	case "kubernetes":
		return bundle.KindKubernetes
	}
	return bundle.KindPostgres
}

// recordOf turns one recorded request into a record, or says why it
// cannot be replayed.
func recordOf(h *header, ev *recorder.Event, o Options) (*Record, string) {
	kind := kindOfProtocol(h.protocol)
	raw := ev.Request
	if ev.Type == recorder.TypeStatement {
		// Format 1: the SQL and its facts.
		if len(ev.Facts) == 0 {
			return nil, "format 1 statements without facts"
		}
		b, err := json.Marshal(struct {
			Kind       string          `json:"kind"`
			Statements json.RawMessage `json:"statements"`
		}{"query", ev.Facts})
		if err != nil {
			return nil, "format 1 statements whose facts do not read"
		}
		raw = b
	}
	if len(raw) == 0 {
		return nil, "requests recorded without their request"
	}
	req, example, err := sanitize(kind, raw, ev.Text+ev.SQL, o.KeepConstants)
	if err != nil {
		return nil, "requests that do not decode: " + err.Error()
	}
	r := &Record{
		Issuer: h.issuer, Subject: h.subject, Groups: slices.Clone(h.groups), Identity: h.identity,
		Provider: h.provider, Claims: h.claims,
		Resource: h.resource, Kind: kind, Request: req, Example: example,
		Effect: ev.Effect, Count: 1, First: ev.Time, Last: ev.Time,
	}
	if r.Groups == nil {
		r.Groups = []string{}
	}
	if h.hasTokenGroups {
		r.TokenGroups = slices.Clone(h.tokenGroups)
	}
	return r, ""
}

// sanitize returns a recorded request ready to export and compare: for
// PostgreSQL, every statement's text normalised (constants become $1, $2,
// ... unless keep), which no rule can read (texts are not in CEL's view);
// and the request's example for people.
func sanitize(kind string, raw json.RawMessage, text string, keep bool) (json.RawMessage, string, error) {
	req, err := celpolicy.DecodeRecorded(kind, raw)
	if err != nil {
		return nil, "", err
	}
	pr, ok := req.(*celpolicy.PostgresRequest)
	if !ok {
		b, err := json.Marshal(req)
		return b, req.Describe(), err
	}
	pr.Masking = nil
	example := strings.TrimSpace(text)
	if !keep {
		example = Normalize(example)
		for i := range pr.Statements {
			pr.Statements[i].Text = Normalize(pr.Statements[i].Text)
		}
		if pr.Problem != "" {
			// The parser's message quotes the text near the error, a
			// constant as often as not. What decides is that there is a
			// problem (such a request is denied), not its wording.
			pr.Problem = "the SQL could not be analysed (the parser's message is not exported: it can quote constants)"
		}
	}
	if example == "" {
		example = pr.Describe()
	}
	b, err := json.Marshal(pr)
	return b, example, err
}

// Normalize replaces a SQL text's constants with placeholders ($1, $2,
// ...). Text that does not parse is replaced as a whole: its constants
// cannot be found, and it may hold some.
func Normalize(sql string) string {
	if strings.TrimSpace(sql) == "" {
		return ""
	}
	n, err := pg.Normalize(sql)
	if err != nil {
		return "(SQL that does not parse; not shown)"
	}
	return strings.TrimSpace(n)
}

// Write writes traffic as an exported traffic file: one JSON record per
// line.
func (t *Traffic) Write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	for _, r := range t.Records {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// ReadFile reads an exported traffic file (or several).
func ReadFile(paths ...string) (*Traffic, error) {
	t := newTraffic()
	for _, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		line := 0
		for sc.Scan() {
			line++
			b := bytes.TrimSpace(sc.Bytes())
			if len(b) == 0 {
				continue
			}
			var r Record
			if err := json.Unmarshal(b, &r); err != nil {
				f.Close()
				return nil, fmt.Errorf("%s:%d: not a traffic record: %v", path, line, err)
			}
			if r.Resource == "" || r.Kind == "" || len(r.Request) == 0 || r.Count <= 0 {
				f.Close()
				return nil, fmt.Errorf("%s:%d: a traffic record needs resource, kind, request and a positive count", path, line)
			}
			if r.Groups == nil {
				r.Groups = []string{}
			}
			t.Requests += r.Count
			t.add(&r)
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	t.sort()
	return t, nil
}

// IsTrafficFile reports whether path looks like an exported traffic file
// rather than a recording: its first line is a record, not an event.
func IsTrafficFile(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	line, _ := bufio.NewReader(f).ReadBytes('\n')
	var probe struct {
		Seq   *int   `json:"seq"`
		Count *int64 `json:"count"`
	}
	return json.Unmarshal(bytes.TrimSpace(line), &probe) == nil && probe.Seq == nil && probe.Count != nil
}

// Merge puts several traffic sources together.
func Merge(ts ...*Traffic) *Traffic {
	if len(ts) == 1 {
		return ts[0]
	}
	out := newTraffic()
	for _, t := range ts {
		out.Requests += t.Requests
		out.Sessions += t.Sessions
		for k, v := range t.Skipped {
			out.Skipped[k] += v
		}
		for _, r := range t.Records {
			c := *r
			out.add(&c)
		}
	}
	out.sort()
	return out
}
