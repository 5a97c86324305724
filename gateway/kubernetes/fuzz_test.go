package kubernetes

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// fuzzHeader builds a header from "Name: value" lines, keys kept as
// written (as a handler could set them directly in the map) and also
// added the canonical way.
func fuzzHeader(s string) http.Header {
	h := http.Header{}
	for line := range strings.SplitSeq(s, "\n") {
		k, v, _ := strings.Cut(line, ":")
		h[k] = append(h[k], strings.TrimSpace(v))
		h.Add(k, strings.TrimSpace(v))
	}
	return h
}

// validHeaderName: net/http's server refuses any other field name on
// the way in, and its transport refuses to send one on the way out.
func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// canonicalRest: no empty, "." or ".." segment, except the empty ones a
// leading and a trailing slash make.
func canonicalRest(rest string) bool {
	if rest == "/" {
		return true
	}
	if !strings.HasPrefix(rest, "/") {
		return false
	}
	for _, s := range strings.Split(strings.TrimSuffix(rest[1:], "/"), "/") {
		if s == "" || s == "." || s == ".." {
			return false
		}
	}
	return true
}

// FuzzAttributes: whatever a caller sends, the request is read without a
// panic; what is accepted is a canonical path, read the same as the API
// server reads the request the gateway forwards; and no identity header
// survives stripping.
func FuzzAttributes(f *testing.F) {
	f.Add("GET", "/api/v1/namespaces/default/pods", "watch=true", "Accept: application/json")
	f.Add("GET", "/api/v1/namespaces/default/secrets", "fieldSelector=metadata.name%3Ddb&watch=1", "Impersonate-User: admin\nimpersonate-group: system:masters")
	f.Add("POST", "/api/v1/namespaces/default/pods/web/exec", "command=sh&command=-c&command=id&container=app", "Connection: Upgrade\nUpgrade: SPDY/3.1")
	f.Add("GET", "/api/v1/namespaces/default/pods/web/exec", "command=ls&stdout=true", "Connection: Upgrade\nUpgrade: websocket\nSec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.dG9r, v5.channel.k8s.io")
	f.Add("PATCH", "/apis/apps/v1/namespaces/x/deployments/y/scale", "", "X-Remote-User: root\nX-Remote-Extra-Scopes: all\nAuthorization: Bearer t")
	f.Add("DELETE", "/api/v1/namespaces/a/../kube-system/secrets", "", "Cookie: a=b\nProxy-Authorization: Basic eDp5")
	f.Add("GET", "/version", "", "")
	f.Add("GET", "//", "", "")
	f.Add("OPTIONS", "/api/v1/watch", "", "")
	f.Add("GET", "/api/v1/proxy/namespaces/x/pods/y/a/b", "", "")
	f.Add("GET", "/api/v1/namespaces/x/pods/y%2F..%2F..%2Fsecrets", "", "")
	f.Fuzz(func(t *testing.T, method, p, rawQuery, headers string) {
		h := fuzzHeader(headers)
		stripIdentityHeaders(h)
		for k := range h {
			c := strings.ToLower(k)
			if !validHeaderName(k) {
				continue
			}
			if c == "authorization" || c == "cookie" || c == "proxy-authorization" ||
				strings.HasPrefix(c, "impersonate-") || strings.HasPrefix(c, "x-remote-") {
				t.Fatalf("header %q survives stripping", k)
			}
		}
		for _, v := range h.Values("Sec-Websocket-Protocol") {
			if strings.Contains(strings.ToLower(v), "base64url.bearer.authorization.k8s.io.") {
				t.Fatalf("token subprotocol survives: %q", v)
			}
		}

		// As ServeHTTP and serve do: the decoded path after the cluster, and
		// the parsed query.
		_, rest, ok := splitCluster(PathPrefix + "c" + p)
		if !ok {
			return
		}
		query, err := url.ParseQuery(rawQuery)
		if err != nil {
			return
		}
		a, err := attributes(method, rest, query, h)
		if err != nil {
			return
		}
		if !canonicalRest(rest) {
			t.Fatalf("non-canonical path %q accepted", rest)
		}
		r := a.Request
		if r == nil || r.Kind != "api" {
			t.Fatalf("request %+v", r)
		}
		if (r.Verb == "") != (r.Problem != "") {
			t.Fatalf("verb %q with problem %q", r.Verb, r.Problem)
		}
		if a.Resource {
			if r.Path != "" || r.Resource == "" || a.APIVersion == "" {
				t.Fatalf("resource request %+v (version %q)", r, a.APIVersion)
			}
			switch r.Verb {
			case "", "get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "proxy":
			default:
				t.Fatalf("verb %q", r.Verb)
			}
			for _, s := range []string{r.Resource, r.Name, r.Namespace, r.Subresource, r.APIGroup} {
				if strings.Contains(s, "/") {
					t.Fatalf("a segment holds a slash: %+v", r)
				}
			}
		} else {
			if r.Path != rest || r.Verb != strings.ToLower(method) || r.Resource != "" || r.Name != "" || r.Namespace != "" {
				t.Fatalf("non-resource request %+v for %q", r, rest)
			}
		}
		if r.Command != nil && (r.Resource != "pods" || r.Subresource != "exec") {
			t.Fatalf("a command outside pods/exec: %+v", r)
		}
		if streaming(r) && r.Verb != "create" && r.Verb != "" {
			t.Fatalf("a stream decided as %q", r.Verb)
		}

		// The request forwarded (proxy.go's rewrite) is read by the API
		// server as the request decided.
		fwd := (&url.URL{Scheme: "https", Host: "api.example", Path: rest, RawQuery: query.Encode()}).String()
		req, err := http.NewRequest(method, fwd, nil)
		if err != nil || method == "" {
			// A method net/http will not send; "" it sends as GET, but a
			// server never reads an empty method, and the gateway
			// refuses one (a Problem) rather than guess.
			return
		}
		info, err := infoFactory.NewRequestInfo(req)
		if err != nil {
			t.Fatalf("forwarded %s reads with an error: %v", fwd, err)
		}
		if req.URL.Path != rest {
			t.Fatalf("forwarded path %q, decided %q", req.URL.Path, rest)
		}
		if info.IsResourceRequest != a.Resource || info.APIGroup != r.APIGroup || info.Resource != r.Resource ||
			info.Subresource != r.Subresource || info.Namespace != r.Namespace || info.Name != r.Name {
			t.Fatalf("forwarded %s reads as %+v, decided %+v", fwd, info, r)
		}
		if info.Verb != r.Verb && !(streaming(r) && info.Verb == "get" && r.Verb == "create") {
			t.Fatalf("forwarded %s reads as verb %q, decided %q", fwd, info.Verb, r.Verb)
		}
		if r.Resource == "pods" && r.Subresource == "exec" && !reflect.DeepEqual(r.Command, req.URL.Query()["command"]) {
			t.Fatalf("command %q, forwarded %q", r.Command, req.URL.Query()["command"])
		}
	})
}

// FuzzFrameReader: any bytes are parsed without a panic, and how they are
// cut into reads does not change what is delivered.
func FuzzFrameReader(f *testing.F) {
	f.Add(frames(srvBin(true, opBinary, chanMsg(1, "hello"))), []byte{3})
	f.Add(frames(cliBin(true, opBinary, chanMsg(0, "ls\n")), cliBin(true, opPing, nil)), []byte{1, 7, 2})
	f.Add(frames(srvBin(false, opBinary, chanMsg(1, "a")), srvBin(true, opPing, []byte("p")), srvBin(true, opCont, []byte("b"))), []byte{5, 5})
	f.Add(frames(srvBin(true, opText, b64Msg(1, "hi")), srvBin(false, opText, []byte("2aG")), srvBin(true, opCont, []byte("k="))), []byte{2})
	f.Add(frames(srvBin(true, opBinary, chanMsg(2, strings.Repeat("e", 300)))), []byte{4, 200})
	f.Add(frames(wsFrame{fin: true, op: opBinary, payload: chanMsg(1, "x"), lenBits: 64, key: clientKey}), []byte{9})
	f.Add([]byte{0x83, 0x01, 0x00}, []byte{})
	f.Add([]byte{0x82, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, []byte{1})
	f.Add(frames(cliBin(true, opBinary, []byte{255, 0}), srvBin(true, opClose, []byte{3, 232})), []byte{})
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		for _, b64 := range []bool{false, true} {
			whole, n := run(b64, [][]byte{data})
			if n != int64(len(data)) {
				t.Fatalf("counted %d of %d bytes", n, len(data))
			}
			var bytewise [][]byte
			for i := range data {
				bytewise = append(bytewise, data[i:i+1])
			}
			var chunks [][]byte
			rest := data
			for _, c := range cuts {
				k := min(int(c), len(rest))
				chunks = append(chunks, rest[:k])
				rest = rest[k:]
			}
			chunks = append(chunks, rest)
			for how, pieces := range map[string][][]byte{"byte by byte": bytewise, "in chunks": chunks} {
				got, n := run(b64, pieces)
				if n != int64(len(data)) {
					t.Fatalf("%s: counted %d of %d bytes", how, n, len(data))
				}
				if !reflect.DeepEqual(got, whole) {
					t.Fatalf("base64 %v, %s: delivered %s, whole %s", b64, how, show(got), show(whole))
				}
			}
			// At most one marker, and it is the last delivery.
			for i, d := range whole {
				if strings.Contains(d.data, "[gatehouse: the stream's framing could not be read") && (d.ch != 3 || i != len(whole)-1) {
					t.Fatalf("marker at %d of %d on channel %d", i, len(whole), d.ch)
				}
			}
		}
	})
}

// FuzzMaskRewrite: any document is rewritten without a panic, into JSON;
// and a Secret's data put into it (at the top, in a list's items, in the
// last-applied annotation) never comes out.
func FuzzMaskRewrite(f *testing.F) {
	f.Add([]byte(secretJSON))
	f.Add([]byte(`{"kind":"SecretList","items":[` + secretJSON + `]}`))
	f.Add([]byte(`{"type":"ADDED","object":` + secretJSON + `}`))
	f.Add([]byte(tableJSON(lastAppliedSecret)))
	f.Add([]byte(`{"kind":"Secret","metadata":{"annotations":{"` + lastApplied + `":"{\"data\":{\"p\":\"eA==\"}}"}},"data":{"p":12.5e3}}`))
	f.Add([]byte(`[{"items":[{"items":[]}]}, null, 1e999]`))
	f.Add([]byte(`{"data":"x","items":{},"rows":[],"kind":"Table","type":7}`))
	f.Add([]byte(`{"a":1}{"b":2}`))
	masks := []fieldMask{
		secretsData(bundle.MaskRedact), secretsData(bundle.MaskPartial), secretsData(bundle.MaskNull),
		{target: "kubernetes:secrets/data", path: []string{"data"}, method: bundle.MaskHash, key: []byte("k"), b64: true},
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		for _, fm := range masks {
			m := newMasker(fm, secretsStringData(fm.method))
			out, err := m.rewrite(doc)
			if err == nil && !json.Valid(out) {
				t.Fatalf("%s: output is not JSON: %q", fm.method, out)
			}
		}

		// The Secret check, on documents that do not hold the value (or
		// any escape that could spell it) already.
		if bytes.ContainsAny(doc, `\`) || bytes.Contains(doc, []byte("s3cr3t")) || bytes.Contains(doc, []byte("czNjcjN0")) {
			return
		}
		dec := json.NewDecoder(bytes.NewReader(doc))
		dec.UseNumber()
		var v map[string]any
		if dec.Decode(&v) != nil || v == nil || dec.More() {
			return
		}
		data := func() map[string]any { return map[string]any{"password": secretB64, "other": "eA=="} }
		v["data"] = data()
		v["stringData"] = map[string]any{"password": secretValue}
		ann, _ := json.Marshal(map[string]any{"kind": "Secret", "data": data(), "stringData": map[string]any{"password": secretValue}})
		v["metadata"] = map[string]any{"name": "db", "annotations": map[string]any{lastApplied: string(ann)}}
		if items, ok := v["items"].([]any); ok {
			v["items"] = append(items, map[string]any{"kind": "Secret", "data": data()})
		}
		if typ, ok := v["type"].(string); ok && typ != "" {
			if o, ok := v["object"].(map[string]any); ok {
				o["data"] = data()
			}
		}
		in, err := json.Marshal(v)
		if err != nil {
			return
		}
		for _, fm := range masks {
			out, err := newMasker(fm, secretsStringData(fm.method)).rewrite(in)
			if err != nil {
				t.Fatalf("%s: a JSON object does not rewrite: %v\n%s", fm.method, err, in)
			}
			if bytes.Contains(out, []byte(secretB64)) || bytes.Contains(out, []byte(secretValue)) {
				t.Fatalf("%s: the secret survives:\nin  %s\nout %s", fm.method, in, out)
			}
		}
	})
}

// FuzzWriteBody: the check of a write to a masked resource never panics,
// and never passes a body that, read as the API server reads it, sets a
// masked field. An Accept part counts as the table form only when the API
// server's own split (at every ';', no quoting) gives exactly as, g and v.
func FuzzWriteBody(f *testing.F) {
	f.Add("application/merge-patch+json", `{"data":{"password":"aGk="}}`, `application/json;x="a;as=Table;g=meta.k8s.io;v=v1"`)
	f.Add("application/apply-patch+yaml", "data:\n  password: aGk=\n", "application/json;as=Table;v=v1;g=meta.k8s.io")
	f.Add("application/json", `{"data":{},"data":{"p":"x"}}`, "application/json")
	f.Add("application/strategic-merge-patch+json", `{"metadata":{"labels":{"a":"b"}}}`, "*/*")
	m := newMasker(secretsData(bundle.MaskRedact), secretsStringData(bundle.MaskRedact))
	f.Fuzz(func(t *testing.T, ct, body, accept string) {
		r, err := http.NewRequest("PATCH", "http://x/", strings.NewReader(body))
		if err != nil {
			t.Skip()
		}
		r.Header.Set("Content-Type", ct)
		msg := m.writes(r)
		if msg == "" {
			var obj map[string]any
			if json.Unmarshal([]byte(body), &obj) == nil && (reaches(obj, []string{"data"}) || reaches(obj, []string{"stringData"})) {
				t.Fatalf("passed a body that sets a masked field: %q (%s)", body, ct)
			}
		}
		if isTable(accept) {
			fields := strings.Split(accept, ";")
			got := map[string]string{}
			for _, p := range fields[1:] {
				k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
				got[k] = v
			}
			if strings.TrimSpace(fields[0]) != "application/json" || !reflect.DeepEqual(got, map[string]string{"as": "Table", "g": "meta.k8s.io", "v": "v1"}) {
				t.Fatalf("%q taken for the table form", accept)
			}
		}
	})
}
