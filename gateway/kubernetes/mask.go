package kubernetes

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/masking"
)

// lastApplied is the annotation `kubectl apply` keeps the applied object
// in, values and all: masked fields are masked inside it too.
const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// masker rewrites the objects of one response: every masked field of
// every object, wherever the response carries objects (an object, a list's
// items, a watch event's object, a table's rows).
type masker struct {
	fields []fieldMask

	mu      sync.Mutex
	applied map[string]bool
}

// fieldMask is one masked field and how it is masked.
type fieldMask struct {
	target string // kubernetes:secrets/data
	path   []string
	method string
	key    []byte
	// b64: the values are base64 (a Secret's data, a ConfigMap's
	// binaryData); the mask applies to what they encode.
	b64 bool
}

// maskError is a response the gateway cannot mask and so does not relay.
type maskError struct{ msg string }

func (e *maskError) Error() string { return e.msg }

// maskerFor is the masker of a decided request: the decision's field
// masks that target the request's resource. nil when none does.
func (s *Server) maskerFor(req *celpolicy.KubernetesRequest, d celpolicy.Decision) (*masker, error) {
	var m *masker
	for _, a := range d.Masks {
		if a.Target.Field == "" {
			continue
		}
		f, err := bundle.ParseKubernetesField(a.Target.Field)
		if err != nil {
			return nil, fmt.Errorf("mask %q: %v", a.Mask, err)
		}
		path, ok := fieldIn(f, req)
		if !ok {
			continue
		}
		if m == nil {
			m = &masker{applied: map[string]bool{}}
		}
		fm := fieldMask{target: a.Target.String(), path: path, method: a.Method,
			b64: f.Group == "" && (f.Resource == "secrets" && f.Path[0] == "data" || f.Resource == "configmaps" && f.Path[0] == "binaryData")}
		if a.Method == bundle.MaskHash {
			fm.key = s.hashKey(a.Mask)
			if fm.key == nil {
				fm.method = bundle.MaskRedact // no key, no hash: fail closed
			}
		}
		m.fields = append(m.fields, fm)
		if f.Group == "" && f.Resource == "secrets" && (f.Path[0] == "data" || f.Path[0] == "stringData") {
			// data and stringData are one set of values: what a writer put
			// in stringData the API server returns in data, and kubectl
			// apply keeps it, as written, in the last-applied annotation.
			// Masking one masks the other.
			twin := fm
			twin.path, twin.b64 = append([]string{"stringData"}, f.Path[1:]...), false
			if f.Path[0] == "stringData" {
				twin.path, twin.b64 = append([]string{"data"}, f.Path[1:]...), true
			}
			twin.target = bundle.KubernetesTargetPrefix + "secrets/" + strings.Join(twin.path, ".")
			m.fields = append(m.fields, twin)
		}
	}
	if m != nil {
		m.fields = strongest(m.fields)
	}
	return m, nil
}

// signature names the masker's fields and methods, in order: two
// maskers with the same signature rewrite an answer the same way. A nil
// masker (no masks) has the empty signature. It holds a hash mask's key
// (a rotated key hashes differently), so it is compared, never logged.
func (m *masker) signature() string {
	if m == nil {
		return ""
	}
	parts := make([]string, 0, len(m.fields))
	for _, f := range m.fields {
		parts = append(parts, strings.Join(f.path, ".")+"="+f.method+"\x00"+string(f.key))
	}
	sort.Strings(parts)
	return strings.Join(parts, "\n")
}

// strongest keeps one mask per path, the strongest: a value is masked
// once (hashing a hash would not be the hash a reader can compare).
func strongest(fields []fieldMask) []fieldMask {
	var out []fieldMask
	at := map[string]int{}
	for _, f := range fields {
		key := strings.Join(f.path, "\x00")
		if i, ok := at[key]; ok {
			if bundle.MaskStrength(f.method) > bundle.MaskStrength(out[i].method) {
				out[i] = f
			}
			continue
		}
		at[key] = len(out)
		out = append(out, f)
	}
	return out
}

// hashKey is a mask's HMAC key, or nil when it cannot be resolved.
func (s *Server) hashKey(mask string) []byte {
	active := s.core.Bundles().Current()
	for _, mk := range active.Payload.Model.Masks {
		if mk.Name == mask && mk.HashKey != "" {
			if v, err := s.secrets.Resolve(mk.HashKey); err == nil {
				return []byte(v)
			}
			s.log.Error("mask hash key not resolved; values are redacted instead", "mask", mask)
		}
	}
	return nil
}

// accept asks the upstream for JSON only: protobuf and CBOR cannot be
// rewritten here. A table (kubectl get's default) is kept for Secrets and
// ConfigMaps when the masks cover only their values (data, stringData,
// binaryData), which no column shows (their rows' objects are masked);
// otherwise a column could show a masked field, so tables are not asked
// for.
//
// The header is rebuilt, never forwarded as written: the API server reads
// Accept with its own parser, which splits parameters at every ';' and
// knows no quoting, so a part this parser reads one way (a quoted
// parameter holding ";as=Table") the API server could read another.
func (m *masker) accept(h http.Header, req *celpolicy.KubernetesRequest) {
	tables := req.APIGroup == "" && (req.Resource == "secrets" || req.Resource == "configmaps")
	for _, f := range m.fields {
		switch f.path[0] {
		case "data", "stringData", "binaryData":
		default:
			// Another field may be a column (a Secret's Type, the Age
			// from metadata.creationTimestamp): no table.
			tables = false
		}
	}
	table := false
	for _, v := range h.Values("Accept") {
		for part := range strings.SplitSeq(v, ",") {
			if tables && isTable(part) {
				table = true
			}
		}
	}
	if table {
		h.Set("Accept", tableAccept+",application/json")
		return
	}
	h.Set("Accept", "application/json")
}

// tableAccept is the one table form the gateway asks for.
const tableAccept = "application/json;as=Table;v=v1;g=meta.k8s.io"

// isTable reports whether an Accept part asks for exactly a meta.k8s.io/v1
// table as JSON: its parameters, split as the API server splits them,
// are as, g and v with those values and nothing else.
func isTable(part string) bool {
	fields := strings.Split(part, ";")
	if strings.TrimSpace(fields[0]) != "application/json" || len(fields) != 4 {
		return false
	}
	want := map[string]string{"as": "Table", "g": "meta.k8s.io", "v": "v1"}
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(strings.TrimSpace(f), "=")
		if !ok || want[k] != v {
			return false
		}
		delete(want, k)
	}
	return len(want) == 0
}

// response masks an upstream response in place. A successful response
// that is not JSON is refused (the gateway cannot see inside it); a
// failed one keeps its code and reason but not its message, which could
// quote a masked value.
func (m *masker) response(resp *http.Response, maxBody int64, watch bool) error {
	if m == nil {
		return nil
	}
	// Warning headers may echo what an admission webhook saw: not
	// relayed where masks apply.
	resp.Header.Del("Warning")
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode >= 300 {
		return m.withholdStatus(resp)
	}
	if mt != "application/json" {
		resp.Body.Close()
		return &maskError{msg: fmt.Sprintf("the cluster answered a masked request with %q, which the gateway cannot mask; the answer is withheld", mt)}
	}
	if enc := resp.Header.Get("Content-Encoding"); enc != "" && enc != "identity" {
		resp.Body.Close()
		return &maskError{msg: fmt.Sprintf("the cluster answered a masked request with %s encoding, which the gateway does not mask; the answer is withheld", enc)}
	}
	if watch {
		resp.Body = &watchMasker{m: m, src: resp.Body, dec: json.NewDecoder(resp.Body)}
		resp.ContentLength = -1
		resp.Header.Del("Content-Length")
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	resp.Body.Close()
	if err != nil {
		return &maskError{msg: fmt.Sprintf("reading the cluster's answer: %v", err)}
	}
	if int64(len(b)) > maxBody {
		return &maskError{msg: fmt.Sprintf("the answer is over %d bytes and masks apply to it; ask for it in chunks (kubectl --chunk-size)", maxBody)}
	}
	out, err := m.rewrite(b)
	if err != nil {
		return &maskError{msg: "the cluster's answer is not JSON the gateway can mask; it is withheld: " + err.Error()}
	}
	resp.Body = io.NopCloser(bytes.NewReader(out))
	resp.ContentLength = int64(len(out))
	resp.Header.Set("Content-Length", strconv.Itoa(len(out)))
	return nil
}

// withholdStatus replaces a failed response's message (and its causes')
// when it is a Status.
func (m *masker) withholdStatus(resp *http.Response) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	var st map[string]any
	if err != nil || json.Unmarshal(b, &st) != nil || st["kind"] != "Status" {
		// Not a Status: say only what the code says.
		st = map[string]any{"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": resp.StatusCode,
			"reason": http.StatusText(resp.StatusCode)}
	}
	reason, _ := st["reason"].(string)
	if reason == "" {
		reason = http.StatusText(resp.StatusCode)
	}
	st["message"] = fmt.Sprintf("the cluster answered %d %s; its message is withheld because masks apply to this request", resp.StatusCode, reason)
	delete(st, "details")
	out, _ := json.Marshal(st)
	resp.Header.Set("Content-Type", "application/json")
	resp.Header.Del("Content-Encoding")
	resp.Body = io.NopCloser(bytes.NewReader(out))
	resp.ContentLength = int64(len(out))
	resp.Header.Set("Content-Length", strconv.Itoa(len(out)))
	return nil
}

// rewrite masks one JSON document: an object, a list, a table or a watch
// event.
func (m *masker) rewrite(b []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("more than one JSON value")
	}
	m.value(v)
	return json.Marshal(v)
}

// value masks whatever objects v carries.
func (m *masker) value(v any) {
	obj, ok := v.(map[string]any)
	if !ok {
		return
	}
	if items, ok := obj["items"].([]any); ok {
		for _, it := range items {
			m.value(it)
		}
	}
	if rows, ok := obj["rows"].([]any); ok && obj["kind"] == "Table" {
		for _, row := range rows {
			if r, ok := row.(map[string]any); ok {
				m.value(r["object"])
			}
		}
	}
	if t, ok := obj["type"].(string); ok && t != "" {
		if o, ok := obj["object"].(map[string]any); ok {
			m.value(o) // a watch event
		}
	}
	m.object(obj)
}

// object masks one object's fields and its last-applied annotation.
func (m *masker) object(obj map[string]any) {
	for _, f := range m.fields {
		if m.field(obj, f) {
			m.note(f)
		}
	}
	md, ok := obj["metadata"].(map[string]any)
	if !ok {
		return
	}
	m.managed(md)
	ann, ok := md["annotations"].(map[string]any)
	if !ok {
		return
	}
	s, ok := ann[lastApplied].(string)
	if !ok {
		return
	}
	var applied map[string]any
	if json.Unmarshal([]byte(s), &applied) != nil {
		// Unreadable: it may hold anything, so it is hidden whole.
		ann[lastApplied] = masking.Redacted
		return
	}
	changed := false
	for _, f := range m.fields {
		if m.field(applied, f) {
			m.note(f)
			changed = true
		}
	}
	if changed {
		out, _ := json.Marshal(applied)
		ann[lastApplied] = string(out)
	}
}

// field masks the value at f's path in obj. It reports whether anything
// was there. A path crosses lists (a Pod's containers, a container's env):
// `spec.containers.env.value` is every container's every variable's value,
// so the mask covers each element rather than silently matching nothing.
func (m *masker) field(obj map[string]any, f fieldMask) bool {
	return maskAt(obj, f.path, f)
}

// maskAt masks the value at path in obj, through any lists on the way.
func maskAt(obj map[string]any, path []string, f fieldMask) bool {
	k := path[0]
	v, ok := obj[k]
	if !ok || v == nil {
		return false
	}
	if len(path) == 1 {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				x[k] = f.mask(e)
			}
		default:
			obj[k] = f.mask(x)
		}
		return true
	}
	return maskIn(v, path[1:], f)
}

// maskIn masks path inside v: an object, or each element of a list.
func maskIn(v any, path []string, f fieldMask) bool {
	switch x := v.(type) {
	case map[string]any:
		return maskAt(x, path, f)
	case []any:
		found := false
		for _, e := range x {
			if maskIn(e, path, f) {
				found = true
			}
		}
		return found
	}
	return false
}

// mask masks one value. Strings are masked as text (a base64 value as
// what it encodes); anything else (numbers, objects, lists) cannot be
// masked partially, and is redacted whole unless the method is null.
func (f fieldMask) mask(v any) any {
	if f.method == bundle.MaskNull {
		return nil
	}
	s, ok := v.(string)
	if !ok {
		return masking.Redacted
	}
	if f.b64 {
		raw, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			raw = []byte(s)
		}
		return base64.StdEncoding.EncodeToString(masking.Apply(f.method, raw, f.key))
	}
	return string(masking.Apply(f.method, []byte(s), f.key))
}

func (m *masker) note(f fieldMask) {
	m.mu.Lock()
	m.applied[f.target+"="+f.method] = true
	m.mu.Unlock()
}

// appliedList names the masks applied, for the recording.
func (m *masker) appliedList() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.applied))
	for k := range m.applied {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// watchMasker masks a watch stream event by event: each is decoded,
// masked and written as one JSON line, so that the caller never receives
// part of an event the gateway has not seen whole.
type watchMasker struct {
	m   *masker
	src io.ReadCloser
	dec *json.Decoder
	buf bytes.Buffer
	err error
}

func (w *watchMasker) Read(p []byte) (int, error) {
	for w.buf.Len() == 0 {
		if w.err != nil {
			return 0, w.err
		}
		w.dec.UseNumber()
		var v any
		if err := w.dec.Decode(&v); err != nil {
			w.err = err
			if err != io.EOF {
				// A broken stream ends here, after the last whole event.
				w.err = io.EOF
			}
			continue
		}
		w.m.value(v)
		out, err := json.Marshal(v)
		if err != nil {
			w.err = io.EOF
			continue
		}
		w.buf.Write(out)
		w.buf.WriteByte('\n')
	}
	return w.buf.Read(p)
}

func (w *watchMasker) Close() error { return w.src.Close() }
