package kubernetes

import (
	"bytes"
	"compress/gzip"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

const (
	secretValue = "s3cr3t-value"
	secretB64   = "czNjcjN0LXZhbHVl" // base64("s3cr3t-value")
	userB64     = "YWRtaW4="         // base64("admin")
	redactedB64 = "W1JFREFDVEVEXQ==" // base64("[REDACTED]")
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func newMasker(fields ...fieldMask) *masker {
	return &masker{fields: fields, applied: map[string]bool{}}
}

func secretsData(method string) fieldMask {
	return fieldMask{target: "kubernetes:secrets/data", path: []string{"data"}, method: method, b64: true}
}

func secretsStringData(method string) fieldMask {
	return fieldMask{target: "kubernetes:secrets/stringData", path: []string{"stringData"}, method: method}
}

const secretJSON = `{"apiVersion":"v1","kind":"Secret","metadata":{"name":"db","namespace":"default","resourceVersion":"42"},` +
	`"data":{"password":"` + secretB64 + `","user":"` + userB64 + `"},"type":"Opaque"}`

// decode reads JSON as the masker does (numbers kept as written).
func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v map[string]any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("output is not a JSON object: %v\n%s", err, b)
	}
	return v
}

// at walks keys (and list indexes) into a decoded document.
func at(t *testing.T, v any, keys ...any) any {
	t.Helper()
	for _, k := range keys {
		switch k := k.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("at %q: %T is not an object", k, v)
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("at [%d]: %T is not a list that long", k, v)
			}
			v = l[k]
		}
	}
	return v
}

func rewriteOK(t *testing.T, m *masker, in string) []byte {
	t.Helper()
	out, err := m.rewrite([]byte(in))
	if err != nil {
		t.Fatalf("rewrite: %v", err)
	}
	if bytes.Contains(out, []byte(secretB64)) || bytes.Contains(out, []byte(secretValue)) {
		t.Errorf("the secret value is in the output:\n%s", out)
	}
	return out
}

func hmacOf(key, v string) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(v))
	return "hmac:" + hex.EncodeToString(m.Sum(nil))[:32]
}

func TestMaskSecretData(t *testing.T) {
	tests := []struct {
		method       string
		key          string
		password     any
		user         any
		appliedEntry string
	}{
		{bundle.MaskRedact, "", redactedB64, redactedB64, "kubernetes:secrets/data=redact"},
		{bundle.MaskPartial, "", b64("s********e"), b64("a***n"), "kubernetes:secrets/data=partial"},
		{bundle.MaskHash, "k3y", b64(hmacOf("k3y", secretValue)), b64(hmacOf("k3y", "admin")), "kubernetes:secrets/data=hash"},
		{bundle.MaskNull, "", nil, nil, "kubernetes:secrets/data=null"},
	}
	for _, tc := range tests {
		f := secretsData(tc.method)
		if tc.key != "" {
			f.key = []byte(tc.key)
		}
		m := newMasker(f)
		out := decode(t, rewriteOK(t, m, secretJSON))
		if got := at(t, out, "data", "password"); got != tc.password {
			t.Errorf("%s: password = %v, want %v", tc.method, got, tc.password)
		}
		if got := at(t, out, "data", "user"); got != tc.user {
			t.Errorf("%s: user = %v, want %v", tc.method, got, tc.user)
		}
		// Keys are kept, and nothing else is touched.
		if d := at(t, out, "data").(map[string]any); len(d) != 2 {
			t.Errorf("%s: data keys %v", tc.method, d)
		}
		if at(t, out, "type") != "Opaque" || at(t, out, "metadata", "name") != "db" || at(t, out, "metadata", "resourceVersion") != "42" {
			t.Errorf("%s: other fields changed: %v", tc.method, out)
		}
		if got := m.appliedList(); !reflect.DeepEqual(got, []string{tc.appliedEntry}) {
			t.Errorf("%s: applied %v", tc.method, got)
		}
	}
	// A hash with another key hashes otherwise.
	a, _ := newMasker(fieldMask{path: []string{"data"}, method: bundle.MaskHash, key: []byte("a"), b64: true}).rewrite([]byte(secretJSON))
	b, _ := newMasker(fieldMask{path: []string{"data"}, method: bundle.MaskHash, key: []byte("b"), b64: true}).rewrite([]byte(secretJSON))
	if bytes.Equal(a, b) {
		t.Error("hash masks under two keys are equal")
	}
}

func TestMaskOddValues(t *testing.T) {
	m := newMasker(secretsData(bundle.MaskRedact))
	// A value that is not base64 is masked as it is; one that is not a
	// string (a number, an object, null) is redacted whole.
	in := `{"kind":"Secret","data":{"a":"not base64!","b":12,"c":{"x":"y"},"d":null,"e":""}}`
	out := decode(t, rewriteOK(t, m, in))
	want := map[string]any{"a": redactedB64, "b": "[REDACTED]", "c": "[REDACTED]", "d": "[REDACTED]", "e": redactedB64}
	if got := at(t, out, "data"); !reflect.DeepEqual(got, want) {
		t.Errorf("data = %v, want %v", got, want)
	}
	// data that is a string, not a map, is masked whole.
	out = decode(t, rewriteOK(t, m, `{"kind":"Secret","data":"`+secretB64+`"}`))
	if got := at(t, out, "data"); got != redactedB64 {
		t.Errorf("data = %v", got)
	}
	// No data: nothing applied.
	m = newMasker(secretsData(bundle.MaskRedact))
	out = decode(t, rewriteOK(t, m, `{"kind":"Secret","metadata":{"name":"x"},"data":null}`))
	if at(t, out, "data") != nil || len(m.appliedList()) != 0 {
		t.Errorf("out %v applied %v", out, m.appliedList())
	}
}

func TestMaskStringData(t *testing.T) {
	m := newMasker(secretsData(bundle.MaskRedact), secretsStringData(bundle.MaskRedact))
	in := `{"kind":"Secret","stringData":{"password":"` + secretValue + `"},"data":{"password":"` + secretB64 + `"}}`
	out := decode(t, rewriteOK(t, m, in))
	if got := at(t, out, "stringData", "password"); got != "[REDACTED]" {
		t.Errorf("stringData.password = %v (stringData is not base64)", got)
	}
	if got := at(t, out, "data", "password"); got != redactedB64 {
		t.Errorf("data.password = %v", got)
	}
	want := []string{"kubernetes:secrets/data=redact", "kubernetes:secrets/stringData=redact"}
	if got := m.appliedList(); !reflect.DeepEqual(got, want) {
		t.Errorf("applied %v, want %v", got, want)
	}
	// Partial on plain text.
	m = newMasker(secretsStringData(bundle.MaskPartial))
	out = decode(t, rewriteOK(t, m, `{"kind":"Secret","stringData":{"password":"`+secretValue+`"}}`))
	if got := at(t, out, "stringData", "password"); got != "s********e" {
		t.Errorf("partial stringData = %v", got)
	}
}

func TestMaskNestedPath(t *testing.T) {
	m := newMasker(fieldMask{target: "kubernetes:widgets.example.com/spec.auth.password", path: []string{"spec", "auth", "password"}, method: bundle.MaskRedact})
	out := decode(t, rewriteOK(t, m, `{"kind":"Widget","spec":{"auth":{"password":"`+secretValue+`","user":"u"},"size":3}}`))
	if at(t, out, "spec", "auth", "password") != "[REDACTED]" || at(t, out, "spec", "auth", "user") != "u" || at(t, out, "spec", "size") != json.Number("3") {
		t.Errorf("out %v", out)
	}
	// An intermediate key that is not an object: nothing to mask.
	out = decode(t, rewriteOK(t, m, `{"kind":"Widget","spec":{"auth":"plain"}}`))
	if at(t, out, "spec", "auth") != "plain" || len(m.appliedList()) != 1 {
		t.Errorf("out %v", out)
	}
}

func TestMaskSecretList(t *testing.T) {
	m := newMasker(secretsData(bundle.MaskRedact))
	in := `{"apiVersion":"v1","kind":"SecretList","metadata":{"resourceVersion":"7","continue":"abc"},"items":[` +
		secretJSON + `,` + strings.Replace(secretJSON, `"db"`, `"db2"`, 1) + `,{"kind":"Secret","metadata":{"name":"empty"}}]}`
	out := decode(t, rewriteOK(t, m, in))
	for i := range 2 {
		if got := at(t, out, "items", i, "data", "password"); got != redactedB64 {
			t.Errorf("items[%d] password = %v", i, got)
		}
	}
	if at(t, out, "items", 1, "metadata", "name") != "db2" || at(t, out, "metadata", "continue") != "abc" {
		t.Errorf("list fields changed: %v", out)
	}
	if _, ok := at(t, out, "items", 2).(map[string]any)["data"]; ok {
		t.Error("an item with no data gained one")
	}
}

// lastAppliedSecret is what `kubectl apply` leaves in the annotation:
// the applied Secret, values and all.
const lastAppliedSecret = `{"apiVersion":"v1","data":{"password":"` + secretB64 + `"},"kind":"Secret","metadata":{"annotations":{},"name":"db","namespace":"default"},"type":"Opaque"}` + "\n"

func tableJSON(annotation string) string {
	ann, _ := json.Marshal(annotation)
	return `{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":"9"},` +
		`"columnDefinitions":[{"name":"Name","type":"string","format":"name"},{"name":"Data","type":"string"}],` +
		`"rows":[{"cells":["db","Opaque",2,"5m"],"object":{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1",` +
		`"metadata":{"name":"db","namespace":"default","annotations":{"` + lastApplied + `":` + string(ann) + `,"team":"x"}}}},` +
		`{"cells":["other","Opaque",0,"1d"],"object":null}]}`
}

func TestMaskTableLastApplied(t *testing.T) {
	m := newMasker(secretsData(bundle.MaskRedact))
	out := decode(t, rewriteOK(t, m, tableJSON(lastAppliedSecret)))
	ann := at(t, out, "rows", 0, "object", "metadata", "annotations").(map[string]any)
	if ann["team"] != "x" {
		t.Errorf("other annotation changed: %v", ann["team"])
	}
	s, ok := ann[lastApplied].(string)
	if !ok {
		t.Fatalf("annotation %v", ann[lastApplied])
	}
	applied := decode(t, []byte(s))
	if got := at(t, applied, "data", "password"); got != redactedB64 {
		t.Errorf("password in the annotation = %v", got)
	}
	if at(t, applied, "metadata", "name") != "db" || at(t, applied, "kind") != "Secret" {
		t.Errorf("annotation lost fields: %s", s)
	}
	// The cells are kept as they were, numbers as numbers.
	if got := at(t, out, "rows", 0, "cells"); !reflect.DeepEqual(got, []any{"db", "Opaque", json.Number("2"), "5m"}) {
		t.Errorf("cells = %v", got)
	}
	if !reflect.DeepEqual(m.appliedList(), []string{"kubernetes:secrets/data=redact"}) {
		t.Errorf("applied %v", m.appliedList())
	}

	// An annotation that does not parse is hidden whole.
	out = decode(t, rewriteOK(t, newMasker(secretsData(bundle.MaskRedact)), tableJSON(`{"data":{"password":"`+secretB64+`"`)))
	if got := at(t, out, "rows", 0, "object", "metadata", "annotations", lastApplied); got != "[REDACTED]" {
		t.Errorf("unparseable annotation = %v", got)
	}
	// One with nothing masked is left byte for byte.
	plain := `{"apiVersion":"v1","kind":"Secret","metadata":{"name":"db"},"type":"Opaque"}` + "\n"
	out = decode(t, rewriteOK(t, newMasker(secretsData(bundle.MaskRedact)), tableJSON(plain)))
	if got := at(t, out, "rows", 0, "object", "metadata", "annotations", lastApplied); got != plain {
		t.Errorf("untouched annotation = %q", got)
	}
	// Not a Table: rows are not objects.
	notTable := `{"kind":"Thing","rows":[{"object":` + secretJSON + `}]}`
	outb, err := newMasker(secretsData(bundle.MaskRedact)).rewrite([]byte(notTable))
	if err != nil || !bytes.Contains(outb, []byte(secretB64)) {
		t.Errorf("rows of a non-Table were masked: %s %v", outb, err)
	}
}

func TestMaskObjectLastApplied(t *testing.T) {
	ann, _ := json.Marshal(lastAppliedSecret)
	in := `{"kind":"Secret","metadata":{"name":"db","annotations":{"` + lastApplied + `":` + string(ann) + `}},"data":{"password":"` + secretB64 + `"}}`
	out := decode(t, rewriteOK(t, newMasker(secretsData(bundle.MaskNull)), in))
	if at(t, out, "data", "password") != nil {
		t.Errorf("data.password = %v", at(t, out, "data", "password"))
	}
	applied := decode(t, []byte(at(t, out, "metadata", "annotations", lastApplied).(string)))
	if at(t, applied, "data", "password") != nil {
		t.Errorf("annotation's password = %v", at(t, applied, "data", "password"))
	}
}

func TestMaskWatchEvent(t *testing.T) {
	m := newMasker(secretsData(bundle.MaskRedact))
	for _, typ := range []string{"ADDED", "MODIFIED", "DELETED"} {
		out := decode(t, rewriteOK(t, m, `{"type":"`+typ+`","object":`+secretJSON+`}`))
		if at(t, out, "type") != typ || at(t, out, "object", "data", "password") != redactedB64 || at(t, out, "object", "metadata", "name") != "db" {
			t.Errorf("%s: %v", typ, out)
		}
	}
	// A watch event of a table (kubectl get -w).
	out := decode(t, rewriteOK(t, m, `{"type":"ADDED","object":`+tableJSON(lastAppliedSecret)+`}`))
	s := at(t, out, "object", "rows", 0, "object", "metadata", "annotations", lastApplied).(string)
	if strings.Contains(s, secretB64) {
		t.Errorf("table event annotation: %s", s)
	}
}

func TestMaskNumbersPreserved(t *testing.T) {
	in := `{"kind":"Secret","metadata":{"generation":12345678901234567890,"x":1.50,"y":-0,"z":1e400},"data":{"p":"` + secretB64 + `"}}`
	out := string(rewriteOK(t, newMasker(secretsData(bundle.MaskRedact)), in))
	for _, n := range []string{`"generation":12345678901234567890`, `"x":1.50`, `"y":-0`, `"z":1e400`} {
		if !strings.Contains(out, n) {
			t.Errorf("%s not kept in %s", n, out)
		}
	}
}

func TestMaskRewriteRefuses(t *testing.T) {
	m := newMasker(secretsData(bundle.MaskRedact))
	for _, in := range []string{``, `{`, `{"a":1}{"b":2}`, `{"a":1} x`, "\xff", `{"kind":"Secret","data":{"p":"x"}`} {
		if out, err := m.rewrite([]byte(in)); err == nil {
			t.Errorf("rewrite(%q) = %s, want an error", in, out)
		}
	}
	// Whitespace around one value is fine; a value that carries no
	// object passes as it is.
	for in, want := range map[string]string{` {"a":1} ` + "\n": `{"a":1}`, `[1,"x"]`: `[1,"x"]`, `"s"`: `"s"`, `null`: `null`} {
		out, err := m.rewrite([]byte(in))
		if err != nil || string(out) != want {
			t.Errorf("rewrite(%q) = %s, %v; want %s", in, out, err, want)
		}
	}
}

func TestMaskAccept(t *testing.T) {
	const kubectlGet = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
	const table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
	secrets := &celpolicy.KubernetesRequest{Resource: "secrets"}
	configmaps := &celpolicy.KubernetesRequest{Resource: "configmaps"}
	deployments := &celpolicy.KubernetesRequest{APIGroup: "apps", Resource: "deployments"}
	otherSecrets := &celpolicy.KubernetesRequest{APIGroup: "example.com", Resource: "secrets"}
	tests := []struct {
		name   string
		accept []string
		req    *celpolicy.KubernetesRequest
		want   string
	}{
		{"kubectl get secrets keeps tables", []string{kubectlGet}, secrets, table},
		{"kubectl get configmaps keeps tables", []string{kubectlGet}, configmaps, table},
		{"a quoted parameter is not a table", []string{`application/json;x="a;as=Table;g=meta.k8s.io;v=v1;y=b"`}, secrets, "application/json"},
		{"a table with more parameters is not one", []string{"application/json;as=Table;v=v1;g=meta.k8s.io;x=y"}, secrets, "application/json"},
		{"spaces around parameters", []string{"application/json; as=Table; v=v1; g=meta.k8s.io"}, secrets, table},
		{"kubectl get deployments drops tables", []string{kubectlGet}, deployments, "application/json"},
		{"secrets of another group drop tables", []string{kubectlGet}, otherSecrets, "application/json"},
		{"table alone gains json", []string{"application/json;as=Table;v=v1;g=meta.k8s.io"}, secrets, "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
		{"protobuf dropped", []string{"application/vnd.kubernetes.protobuf,application/json"}, secrets, "application/json"},
		{"protobuf only", []string{"application/vnd.kubernetes.protobuf"}, secrets, "application/json"},
		{"protobuf table dropped", []string{"application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io, application/json"}, secrets, "application/json"},
		{"cbor dropped", []string{"application/cbor"}, deployments, "application/json"},
		{"cbor and json", []string{"application/cbor, application/json"}, deployments, "application/json"},
		{"yaml dropped", []string{"application/yaml"}, secrets, "application/json"},
		{"wildcard", []string{"*/*"}, secrets, "application/json"},
		{"none", nil, secrets, "application/json"},
		{"partial metadata dropped", []string{"application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"}, secrets, "application/json"},
		{"watch stream: plain JSON", []string{"application/json;stream=watch"}, secrets, "application/json"},
		{"two header values", []string{"application/json;as=Table;v=v1;g=meta.k8s.io", "application/vnd.kubernetes.protobuf, application/json"}, configmaps, "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
		{"garbage dropped", []string{";;;, application/json"}, secrets, "application/json"},
	}
	for _, tc := range tests {
		h := http.Header{}
		for _, v := range tc.accept {
			h.Add("Accept", v)
		}
		newMasker(secretsData(bundle.MaskRedact)).accept(h, tc.req)
		if got := h.Values("Accept"); len(got) != 1 || got[0] != tc.want {
			t.Errorf("%s: Accept = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// closeTracker is a response body that notes whether it was closed.
type closeTracker struct {
	io.Reader
	closed bool
}

func (c *closeTracker) Close() error { c.closed = true; return nil }

func newResponse(code int, contentType, body string) (*http.Response, *closeTracker) {
	b := &closeTracker{Reader: strings.NewReader(body)}
	h := http.Header{}
	if contentType != "" {
		h.Set("Content-Type", contentType)
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	return &http.Response{StatusCode: code, Header: h, Body: b, ContentLength: int64(len(body))}, b
}

func readBodyOf(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMaskResponseJSON(t *testing.T) {
	for _, ct := range []string{"application/json", "application/json; charset=utf-8"} {
		resp, src := newResponse(200, ct, secretJSON)
		m := newMasker(secretsData(bundle.MaskRedact))
		if err := m.response(resp, 1<<20, false); err != nil {
			t.Fatalf("%s: %v", ct, err)
		}
		if !src.closed {
			t.Errorf("%s: upstream body not closed", ct)
		}
		b := readBodyOf(t, resp)
		if at(t, decode(t, b), "data", "password") != redactedB64 {
			t.Errorf("%s: body %s", ct, b)
		}
		if resp.ContentLength != int64(len(b)) || resp.Header.Get("Content-Length") != strconv.Itoa(len(b)) {
			t.Errorf("%s: Content-Length %d / %q, body %d bytes", ct, resp.ContentLength, resp.Header.Get("Content-Length"), len(b))
		}
		if len(m.appliedList()) != 1 {
			t.Errorf("%s: applied %v", ct, m.appliedList())
		}
	}
}

func TestMaskResponseNil(t *testing.T) {
	var m *masker
	resp, src := newResponse(200, "application/vnd.kubernetes.protobuf", "\x6b\x38\x73\x00")
	if err := m.response(resp, 10, false); err != nil {
		t.Fatal(err)
	}
	if src.closed || resp.Body != io.ReadCloser(src) {
		t.Error("a nil masker touched the response")
	}
}

func TestMaskResponseRefused(t *testing.T) {
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write([]byte(secretJSON))
	w.Close()
	tests := []struct {
		name, ct, enc, body string
		max                 int64
		msg                 string
	}{
		{"protobuf", "application/vnd.kubernetes.protobuf", "", "k8s\x00\x0a\x0c", 1 << 20, "application/vnd.kubernetes.protobuf"},
		{"cbor", "application/cbor", "", "\xd9\xd9\xf7", 1 << 20, "application/cbor"},
		{"no content type", "", "", secretJSON, 1 << 20, "cannot mask"},
		{"gzip", "application/json", "gzip", gz.String(), 1 << 20, "gzip"},
		{"over maxBody", "application/json", "", secretJSON, int64(len(secretJSON)) - 1, "is over"},
		{"not JSON", "application/json", "", `{"kind":"Secret",`, 1 << 20, "not JSON"},
		{"two values", "application/json", "", secretJSON + secretJSON, 1 << 20, "not JSON"},
	}
	for _, tc := range tests {
		resp, src := newResponse(200, tc.ct, tc.body)
		if tc.enc != "" {
			resp.Header.Set("Content-Encoding", tc.enc)
		}
		err := newMasker(secretsData(bundle.MaskRedact)).response(resp, tc.max, false)
		var me *maskError
		if !errors.As(err, &me) {
			t.Errorf("%s: error %v, want a *maskError", tc.name, err)
			continue
		}
		if !strings.Contains(me.Error(), tc.msg) {
			t.Errorf("%s: message %q does not name %q", tc.name, me.Error(), tc.msg)
		}
		if strings.Contains(me.Error(), secretB64) {
			t.Errorf("%s: message quotes the secret", tc.name)
		}
		if !src.closed {
			t.Errorf("%s: upstream body not closed", tc.name)
		}
	}
	// Exactly maxBody is accepted.
	resp, _ := newResponse(200, "application/json", secretJSON)
	if err := newMasker(secretsData(bundle.MaskRedact)).response(resp, int64(len(secretJSON)), false); err != nil {
		t.Errorf("a body of exactly maxBody: %v", err)
	}
	// identity encoding is no encoding.
	resp, _ = newResponse(200, "application/json", secretJSON)
	resp.Header.Set("Content-Encoding", "identity")
	if err := newMasker(secretsData(bundle.MaskRedact)).response(resp, 1<<20, false); err != nil {
		t.Errorf("identity encoding: %v", err)
	}
}

func TestMaskResponseFailureStatus(t *testing.T) {
	forbidden := `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",` +
		`"message":"secrets \"db\" is forbidden: value ` + secretValue + ` rejected",` +
		`"reason":"Forbidden","details":{"name":"db","kind":"secrets","causes":[{"message":"` + secretB64 + `"}]},"code":403}`
	tests := []struct {
		name       string
		code       int
		ct, enc    string
		body       string
		wantReason string
	}{
		{"forbidden Status", 403, "application/json", "", forbidden, "Forbidden"},
		{"invalid Status", 422, "application/json", "", strings.ReplaceAll(strings.ReplaceAll(forbidden, "Forbidden", "Invalid"), "403", "422"), "Invalid"},
		{"plain text error", 500, "text/plain", "", "internal error: " + secretValue, "Internal Server Error"},
		{"protobuf error", 404, "application/vnd.kubernetes.protobuf", "", "k8s\x00" + secretValue, "Not Found"},
		{"gzip error", 403, "application/json", "gzip", "\x1f\x8b" + secretValue, "Forbidden"},
		{"JSON that is no Status", 409, "application/json", "", `{"kind":"Secret","message":"` + secretValue + `"}`, "Conflict"},
		{"redirect", 302, "text/html", "", `<a href="/x?token=` + secretValue + `">`, "Found"},
	}
	for _, tc := range tests {
		resp, src := newResponse(tc.code, tc.ct, tc.body)
		if tc.enc != "" {
			resp.Header.Set("Content-Encoding", tc.enc)
		}
		if err := newMasker(secretsData(bundle.MaskRedact)).response(resp, 1<<20, false); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !src.closed {
			t.Errorf("%s: upstream body not closed", tc.name)
		}
		b := readBodyOf(t, resp)
		if bytes.Contains(b, []byte(secretValue)) || bytes.Contains(b, []byte(secretB64)) {
			t.Errorf("%s: the secret survives: %s", tc.name, b)
		}
		st := decode(t, b)
		if st["kind"] != "Status" || st["reason"] != tc.wantReason || st["code"] != json.Number(strconv.Itoa(tc.code)) {
			t.Errorf("%s: Status %s", tc.name, b)
		}
		if _, ok := st["details"]; ok {
			t.Errorf("%s: details kept: %s", tc.name, b)
		}
		if msg, _ := st["message"].(string); !strings.Contains(msg, "withheld") || !strings.Contains(msg, strconv.Itoa(tc.code)) {
			t.Errorf("%s: message %q", tc.name, msg)
		}
		if resp.StatusCode != tc.code || resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Content-Encoding") != "" {
			t.Errorf("%s: %d %v", tc.name, resp.StatusCode, resp.Header)
		}
		if resp.ContentLength != int64(len(b)) || resp.Header.Get("Content-Length") != strconv.Itoa(len(b)) {
			t.Errorf("%s: Content-Length %d / %q, body %d", tc.name, resp.ContentLength, resp.Header.Get("Content-Length"), len(b))
		}
	}
}

func TestMaskResponseWatch(t *testing.T) {
	events := []string{
		`{"type":"ADDED","object":` + secretJSON + `}`,
		`{"type":"MODIFIED","object":` + strings.Replace(secretJSON, `"42"`, `"43"`, 1) + `}`,
		`{"type":"BOOKMARK","object":{"kind":"Secret","apiVersion":"v1","metadata":{"resourceVersion":"44"}}}`,
		`{"type":"DELETED","object":` + strings.Replace(secretJSON, `"42"`, `"45"`, 1) + `}`,
	}
	stream := strings.Join(events, "\n") + "\n"
	for _, how := range []string{"whole", "one byte at a time", "half events"} {
		var r io.Reader = strings.NewReader(stream)
		switch how {
		case "one byte at a time":
			r = iotest.OneByteReader(r)
		case "half events":
			r = iotest.HalfReader(r)
		}
		src := &closeTracker{Reader: r}
		resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}, "Content-Length": {"999"}}, Body: src, ContentLength: 999}
		m := newMasker(secretsData(bundle.MaskRedact))
		if err := m.response(resp, 10, true); err != nil { // maxBody does not bound a stream
			t.Fatalf("%s: %v", how, err)
		}
		if resp.ContentLength != -1 || resp.Header.Get("Content-Length") != "" {
			t.Errorf("%s: Content-Length %d %q", how, resp.ContentLength, resp.Header.Get("Content-Length"))
		}
		// Read in small pieces, as a proxy copying the stream would.
		out, err := io.ReadAll(iotest.OneByteReader(resp.Body))
		if err != nil {
			t.Fatalf("%s: %v", how, err)
		}
		lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
		if len(lines) != len(events) {
			t.Fatalf("%s: %d events out, want %d:\n%s", how, len(lines), len(events), out)
		}
		for i, l := range lines {
			ev := decode(t, []byte(l))
			if want := decode(t, []byte(events[i]))["type"]; ev["type"] != want {
				t.Errorf("%s: event %d type %v, want %v", how, i, ev["type"], want)
			}
			if i != 2 && at(t, ev, "object", "data", "password") != redactedB64 {
				t.Errorf("%s: event %d not masked: %s", how, i, l)
			}
		}
		if bytes.Contains(out, []byte(secretB64)) {
			t.Errorf("%s: the secret survives", how)
		}
		if err := resp.Body.Close(); err != nil || !src.closed {
			t.Errorf("%s: close %v %v", how, err, src.closed)
		}
	}
}

// TestMaskResponseWatchBroken: a stream that breaks mid-event ends after
// the last whole event, and the partial event never reaches the caller.
func TestMaskResponseWatchBroken(t *testing.T) {
	whole := `{"type":"ADDED","object":` + secretJSON + `}` + "\n"
	partial := `{"type":"MODIFIED","object":{"kind":"Secret","data":{"password":"` + secretB64
	for _, tail := range []string{partial, `}}}garbage`, partial + `"}}}` + "\x00"} {
		resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(whole + tail))}
		if err := newMasker(secretsData(bundle.MaskRedact)).response(resp, 1<<20, true); err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%q: %v", tail, err)
		}
		if bytes.Contains(out, []byte(secretB64)) {
			t.Errorf("%q: the secret survives: %s", tail, out)
		}
		if bytes.Count(out, []byte("\n")) < 1 || !bytes.Contains(out, []byte(`"type":"ADDED"`)) {
			t.Errorf("%q: the whole event is lost: %s", tail, out)
		}
	}
	// An upstream read error ends the stream too.
	resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(io.MultiReader(strings.NewReader(whole), iotest.ErrReader(errors.New("connection reset"))))}
	if err := newMasker(secretsData(bundle.MaskRedact)).response(resp, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(resp.Body)
	if err != nil || bytes.Count(out, []byte("\n")) != 1 || bytes.Contains(out, []byte(secretB64)) {
		t.Errorf("after a read error: %q %v", out, err)
	}
}

// A per-key mask on a Secret's data (secrets/data.password) also masks
// the key in stringData, which kubectl apply keeps in the last-applied
// annotation as written, and masks what the base64 encodes.
func TestPerKeySecretMask(t *testing.T) {
	req := &celpolicy.KubernetesRequest{Verb: "get", Resource: "secrets", Namespace: "ns", Name: "db"}
	d := celpolicy.Decision{Masks: []celpolicy.MaskAction{{Target: celpolicy.MaskTarget{Field: "secrets/data.password"}, Method: "redact", Mask: "pw"}}}
	m, err := (&Server{}).maskerFor(req, d)
	if err != nil || m == nil {
		t.Fatalf("maskerFor: %v %v", m, err)
	}
	applied := `{\"kind\":\"Secret\",\"stringData\":{\"password\":\"hunter2\",\"user\":\"app\"}}`
	doc := `{"kind":"Secret","data":{"password":"aHVudGVyMg==","user":"YXBw"},"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"` + applied + `"}}}`
	out, err := m.rewrite([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	got := string(out)
	if strings.Contains(got, "hunter2") || strings.Contains(got, "aHVudGVyMg==") {
		t.Fatalf("the password leaks: %s", got)
	}
	if !strings.Contains(got, `"password":"W1JFREFDVEVEXQ=="`) || !strings.Contains(got, `"user":"YXBw"`) || !strings.Contains(got, `\"user\":\"app\"`) {
		t.Fatalf("masked too much or not as base64: %s", got)
	}
}

// A recording that cannot read the stream's framing says so, and feed
// reports it, so that the stream is closed rather than relayed unrecorded.
func TestFrameReaderFailsClosed(t *testing.T) {
	var got []string
	f := frameReader{deliver: func(ch byte, data []byte) { got = append(got, string(data)) }}
	if !f.feed([]byte{0x82, 0x02, 0x00, 'a'}) {
		t.Fatal("a good frame failed")
	}
	if f.feed([]byte{0x83, 0x01, 'x'}) { // a reserved opcode
		t.Fatal("an unknown opcode was accepted")
	}
	if f.feed([]byte{0x82, 0x02, 0x00, 'b'}) {
		t.Fatal("a broken reader took more")
	}
	if len(got) != 2 || got[0] != "a" || !strings.Contains(got[1], "closed") {
		t.Fatalf("deliveries %q", got)
	}
}
