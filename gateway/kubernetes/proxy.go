package kubernetes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// maxRequestBody bounds a request body the gateway reads to bind an
// approval to it (the API server's own limit is 3 MiB).
const maxRequestBody = 3 << 20

// call is one API request on its way through the gateway.
type call struct {
	srv     *Server
	e       *entry
	cs      *core.Session
	cluster *bundle.KubernetesCluster
	attrs   Attributes
	rest    string
	query   url.Values
	text    string
	ref     int
	d       celpolicy.Decision
	masks   *masker
	started time.Time
}

// serve decides, records and forwards one request of a caller.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, cluster, rest, token string) {
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", fmt.Sprintf("gatehouse: the query string does not parse: %v", err))
		return
	}
	attrs, err := attributes(r.Method, rest, query, r.Header)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "gatehouse: "+err.Error())
		return
	}
	e, ref := s.session(r.Context(), r, cluster, token)
	if ref != nil {
		writeRefusal(w, ref)
		return
	}
	e.busy.Add(1)
	defer e.busy.Add(-1)
	cs := e.s
	cs.Touch()
	if ref := cs.Check(r.Context()); ref != nil {
		cs.Terminate(ref)
		writeRefusal(w, ref)
		return
	}
	c := &call{srv: s, e: e, cs: cs, attrs: attrs, rest: rest, query: query, started: time.Now()}
	c.text = r.Method + " " + rest
	if len(query) > 0 {
		c.text += "?" + query.Encode()
	}
	if !c.decide(w, r) {
		return
	}
	c.forward(w, r)
}

// decide decides the request, holds it for approvers when a review rule
// says so, and records it before anything is forwarded. false: the
// caller has its answer.
func (c *call) decide(w http.ResponseWriter, r *http.Request) bool {
	cs, req := c.cs, c.attrs.Request
	d := cs.Decide(req, true)
	if d.Effect == bundle.EffectReview {
		// The approval binds the exact request: its method, path, query
		// and body. The body is read here and forwarded as read.
		body, err := readBody(r)
		if err != nil {
			cs.Tally(false)
			writeStatus(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "gatehouse: "+err.Error())
			return false
		}
		v := cs.Hold(r.Context(), c.held(r, d, body))
		switch {
		case v.Gone:
			return false
		case v.End != nil:
			cs.Terminate(v.End)
			writeRefusal(w, v.End)
			return false
		case v.Refusal != nil:
			writeRefusal(w, v.Refusal)
			return false
		}
		c.d, c.ref = v.Decision, v.Ref
	} else {
		ref, err := cs.RecordRequest(core.Requested{Kind: "api", Text: c.text, Request: req, Decision: d})
		if err != nil {
			writeRefusal(w, cs.Unrecorded())
			return false
		}
		if d.Effect != bundle.EffectAllow {
			writeRefusal(w, cs.Denial(d, req))
			cs.NoteOutcome(ref, core.Outcome{Status: http.StatusForbidden})
			return false
		}
		c.d, c.ref = d, ref
	}
	// refuse answers a request the policy allowed but the gateway still
	// cannot pass, and records why.
	refuse := func(status int, reason, msg string) bool {
		writeStatus(w, status, reason, msg)
		cs.NoteOutcome(c.ref, core.Outcome{Status: status, Error: msg})
		return false
	}
	if c.attrs.Upgrade == "spdy" {
		// SPDY streams cannot be recorded here: kubectl 1.30 and later
		// speak WebSocket, and fall back to SPDY only when it fails.
		msg := "gatehouse: SPDY streams are refused: the gateway records exec, attach and port-forward over WebSocket (kubectl 1.30 or later; client-go's NewWebSocketExecutor)"
		return refuse(http.StatusBadRequest, "BadRequest", msg)
	}
	if c.attrs.Upgrade != "" && !streaming(c.attrs.Request) {
		// Only exec, attach and port-forward upgrade. The API server also
		// serves watches over WebSocket, and such a stream would pass
		// unmasked and unrecorded: refused.
		msg := fmt.Sprintf("gatehouse: the connection upgrade is refused: only pods/exec, pods/attach and pods/portforward are streamed through the gateway, not %s", c.attrs.Request.Describe())
		return refuse(http.StatusBadRequest, "BadRequest", msg)
	}
	if !c.attrs.Resource && !readOnly(r.Method) {
		msg := fmt.Sprintf("gatehouse: %s %s is refused: only GET and HEAD reach non-resource paths", r.Method, c.rest)
		return refuse(http.StatusForbidden, "Forbidden", msg)
	}
	masks, err := c.srv.maskerFor(c.attrs.Request, c.d)
	if err != nil {
		msg := "gatehouse: " + err.Error()
		return refuse(http.StatusServiceUnavailable, "ServiceUnavailable", msg)
	}
	c.masks = masks
	if masks != nil && c.attrs.Request.Verb == "patch" && isJSONPatch(r.Header.Get("Content-Type")) {
		// A JSON patch can copy or move a masked field into one that is
		// not masked, or test its value, and the answer (even a dry
		// run's) shows the result: refused where masks apply.
		msg := "gatehouse: a JSON patch (application/json-patch+json) is refused on a resource whose fields masks hide from you: it could copy or test a masked value; use a merge patch"
		return refuse(http.StatusForbidden, "Forbidden", msg)
	}
	if masks == nil {
		return true
	}
	msg := masks.selects(c.query)
	if msg == "" && (c.attrs.Request.Verb == "patch" || c.attrs.Request.Verb == "update") {
		msg = masks.writes(r)
	}
	if msg != "" {
		return refuse(http.StatusForbidden, "Forbidden", "gatehouse: "+msg)
	}
	return true
}

// isJSONPatch reports whether a Content-Type is an RFC 6902 JSON patch.
func isJSONPatch(ct string) bool {
	mt, _, _ := mime.ParseMediaType(ct)
	return mt == "application/json-patch+json"
}

func readOnly(method string) bool { return method == http.MethodGet || method == http.MethodHead }

// readBody reads a request body the gateway must see whole, and puts it
// back for forwarding.
func readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
	if err != nil {
		return nil, fmt.Errorf("reading the request body: %v", err)
	}
	if len(b) > maxRequestBody {
		return nil, fmt.Errorf("the request body is over %d bytes", maxRequestBody)
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.ContentLength = int64(len(b))
	return b, nil
}

// forward sends an allowed request upstream with the gateway's
// credential and relays the answer, masked, re-checking long ones.
func (c *call) forward(w http.ResponseWriter, r *http.Request) {
	cs := c.cs
	active := c.srv.core.Bundles().Current()
	cluster, ok := clusterOf(&active.Payload.Model, cs.Resource())
	if !ok {
		writeRefusal(w, &core.Refusal{Code: core.Revoked, Message: fmt.Sprintf("gatehouse: bundle revision %d has no cluster %q", active.Revision, cs.Resource())})
		return
	}
	c.cluster = cluster
	if user := onTheWire(cs.Identity().Subject); cluster.Impersonate && (reserved(user) || user == "") {
		msg := fmt.Sprintf("gatehouse: the token's subject %q is a name Kubernetes reserves (system:…); the gateway does not impersonate it", cs.Identity().Subject)
		if user == "" {
			// An empty Impersonate-User is no impersonation at all: the
			// request would run as the gateway's own identity.
			msg = fmt.Sprintf("gatehouse: the token's subject %q is empty as the API server reads a header; the gateway does not impersonate it", cs.Identity().Subject)
		}
		writeStatus(w, http.StatusForbidden, "Forbidden", msg)
		cs.NoteOutcome(c.ref, core.Outcome{Status: http.StatusForbidden, Error: msg})
		return
	}
	up, err := c.srv.clusters.get(cluster)
	if err != nil {
		cs.Log().Error("cluster unreachable: its configuration does not load", "err", err)
		msg := fmt.Sprintf("gatehouse: cluster %q cannot be reached: its credential or address does not load (the gateway's log has the cause)", cluster.Name)
		writeStatus(w, http.StatusBadGateway, "ServiceUnavailable", msg)
		cs.NoteOutcome(c.ref, core.Outcome{Status: http.StatusBadGateway, Error: msg})
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	// Every request is re-checked while it runs, not only the ones known
	// to be long (a watch, an exec, a followed log): the API server takes
	// follow=1 or follow=yes for true, and a proxy subresource or a slow
	// list can run as long.
	stop := c.recheck(ctx, cancel)
	defer stop()
	r = r.WithContext(ctx)
	rw := &statusWriter{ResponseWriter: w}
	rt := up.rt
	if c.attrs.Upgrade != "" {
		rt = up.upgrade
	}
	var rec *execRecording
	rp := &httputil.ReverseProxy{
		Transport:     rt,
		FlushInterval: -1,
		Rewrite:       func(pr *httputil.ProxyRequest) { c.rewrite(pr, up) },
		ModifyResponse: func(resp *http.Response) error {
			if resp.StatusCode == http.StatusSwitchingProtocols {
				if c.attrs.Upgrade == "" || !streaming(c.attrs.Request) {
					resp.Body.Close()
					return &maskError{msg: "the cluster switched protocols on a request that is not a stream; the answer is withheld"}
				}
				var err error
				rec, err = c.recordStream(resp)
				return err
			}
			watch := c.attrs.Request.Verb == "watch"
			if err := c.masks.response(resp, c.srv.cfg.MaxBody, watch); err != nil {
				return err
			}
			if watch && resp.StatusCode < 300 {
				resp.Body = newWatchGate(c, resp.Body)
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) {
				return
			}
			msg := "gatehouse: " + err.Error()
			var me *maskError
			if errors.As(err, &me) {
				msg = "gatehouse: " + me.msg
			} else {
				cs.Log().Warn("upstream request failed", "cluster", cluster.Name, "err", err)
				msg = fmt.Sprintf("gatehouse: cluster %q did not answer: %v", cluster.Name, err)
			}
			writeStatus(w, http.StatusBadGateway, "InternalError", msg)
		},
		ErrorLog: nil,
	}
	rp.ServeHTTP(rw, r)
	o := core.Outcome{Duration: time.Since(c.started), Status: rw.status, Bytes: rw.bytes}
	if rec != nil {
		o.Bytes = rec.close()
	}
	if c.masks != nil && len(c.masks.applied) > 0 {
		cs.NoteMasked(c.ref, c.masks.appliedList())
	}
	cs.NoteOutcome(c.ref, o)
}

// rewrite makes the upstream request: the cluster's URL, the path and
// query exactly as decided, no caller credential or identity header, and
// the caller's identity as impersonation when the cluster asks for it.
func (c *call) rewrite(pr *httputil.ProxyRequest, up *upstream) {
	out := pr.Out
	out.URL = &url.URL{Scheme: up.server.Scheme, Host: up.server.Host,
		Path: strings.TrimSuffix(up.server.Path, "/") + c.rest, RawQuery: c.query.Encode()}
	out.Host = ""
	stripIdentityHeaders(out.Header)
	out.Header.Del("Accept-Encoding")
	if c.cluster.Impersonate {
		id := c.cs.Identity()
		out.Header.Set("Impersonate-User", onTheWire(id.Subject))
		for _, g := range id.Groups {
			g = onTheWire(g)
			if reserved(g) || g == "" {
				// system:masters would be the cluster's administrators: a
				// group claim is not trusted that far.
				continue
			}
			out.Header.Add("Impersonate-Group", g)
		}
	}
	if c.masks != nil {
		c.masks.accept(out.Header, c.attrs.Request)
	}
	if c.attrs.Upgrade == "websocket" {
		filterSubprotocols(out.Header)
	}
}

// reserved reports whether a user or group name is one Kubernetes keeps
// for itself (system:masters, system:serviceaccount:…, system:nodes): the
// gateway never impersonates such a name, whatever the token says, since
// an identity provider's claim would otherwise make a caller a cluster
// administrator or a node.
func reserved(name string) bool { return strings.HasPrefix(name, "system:") }

// onTheWire is a name as the API server reads it from a header: HTTP/1.1
// (net/http, writing an exec's upgrade) turns line breaks into spaces and
// trims the spaces and tabs around a value, so a group claim
// " system:masters" would arrive as system:masters. Names are judged, and
// sent, in this form.
func onTheWire(name string) string {
	return textproto.TrimString(strings.NewReplacer("\r", " ", "\n", " ").Replace(name))
}

// recheck re-checks a request while it runs (a watch, an exec, a
// followed log, or any other that takes long) every RecheckEvery and whenever the session ends: the token must still
// be valid, the session allowed under the bundle in force, and the
// request itself still allowed by it. Otherwise the stream is cut.
func (c *call) recheck(ctx context.Context, cancel context.CancelFunc) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(c.srv.cfg.RecheckEvery)
		defer t.Stop()
		revision := c.d.BundleRevision
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-c.cs.Closed():
				cancel()
				return
			case <-t.C:
			}
			if ref := c.cs.Check(ctx); ref != nil {
				c.cs.Terminate(ref)
				cancel()
				return
			}
			active := c.srv.core.Bundles().Current()
			if active.Revision == revision {
				continue
			}
			revision = active.Revision
			d := c.cs.Judge(c.attrs.Request)
			if d.Effect != bundle.EffectAllow {
				c.cs.Log().Info("a long request is cut: the bundle in force no longer allows it", "request", c.attrs.Request.Describe(), "revision", active.Revision)
				c.cs.NoteOutcome(c.ref, core.Outcome{Error: fmt.Sprintf("cut: bundle revision %d no longer allows it: %s", active.Revision, strings.Join(d.Reasons, "; "))})
				cancel()
				return
			}
			if c.attrs.Upgrade == "" && !c.sameMasks(d) {
				// Still allowed, but its answer is rewritten with the masks
				// decided when it began: a watch opened before a bundle that
				// masks what it carries would go on showing the values. The
				// caller's next request is masked as the bundle in force says.
				c.cs.Log().Info("a long request is cut: the bundle in force masks its answer differently", "request", c.attrs.Request.Describe(), "revision", active.Revision)
				c.cs.NoteOutcome(c.ref, core.Outcome{Error: fmt.Sprintf("cut: bundle revision %d masks its answer differently", active.Revision)})
				cancel()
				return
			}
		}
	}()
	return func() { close(done); <-finished }
}

// sameMasks reports whether a new decision masks the request's answer as
// the one it began with did: the same fields, with the same methods. A
// mask that cannot be applied counts as a change (fail closed).
func (c *call) sameMasks(d celpolicy.Decision) bool {
	m, err := c.srv.maskerFor(c.attrs.Request, d)
	if err != nil {
		return false
	}
	return m.signature() == c.masks.signature()
}

// statusWriter remembers the status and counts the bytes of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// clusterOf finds a cluster in a bundle.
func clusterOf(m *bundle.Model, name string) (*bundle.KubernetesCluster, bool) {
	for i := range m.KubernetesClusters {
		if m.KubernetesClusters[i].Name == name {
			return &m.KubernetesClusters[i], true
		}
	}
	return nil, false
}
