package kubernetes

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/http"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// held is how a request under review waits: in the caller's request, for
// up to the rule's wait (kubectl sets no request timeout by default), and
// a caller that hangs up withdraws it. The approval binds the method, the
// path, the query and the body, byte for byte, as they will be forwarded.
func (c *call) held(r *http.Request, d celpolicy.Decision, body []byte) core.Held {
	ct := r.Header.Get("Content-Type")
	// The Content-Type is part of what is approved: one body is a merge,
	// a strategic merge or an apply patch depending on it.
	hash := requestHash(r.Method, c.rest, c.query.Encode(), ct, body)
	h := core.Held{Kind: "api", Text: c.text, Request: c.attrs.Request, Decision: d,
		Bind: func() (string, error) { return hash, nil },
		// A request cannot say it is held before its answer: the hold
		// is logged and recorded, and the caller waits.
		Notify: func(ar approval.Request, wait time.Duration) error {
			c.cs.Log().Info("request held for approval", "approval", ar.ID, "wait", wait, "request", c.text)
			return r.Context().Err()
		},
		Watch: func() (<-chan struct{}, func()) {
			gone := make(chan struct{})
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				select {
				case <-r.Context().Done():
					close(gone)
				case <-stop:
				}
			}()
			return gone, func() { close(stop); <-done }
		},
		// An upgrade (exec) cannot wait: its client times the upgrade
		// out. It is refused with the approval's id, and a retry after
		// approval passes.
		Immediate: c.attrs.Upgrade != "",
	}
	h.Subject.Text = c.text
	if ct != "" && len(body) > 0 {
		h.Subject.Text += " (Content-Type: " + ct + ")"
	}
	if len(body) > 0 {
		h.Subject.Params = []string{shownBody(c.attrs.Request, body, masksResource(d, c.attrs.Request))}
	}
	return h
}

// maxShownBody bounds the body approvers are shown.
const maxShownBody = 4 << 10

// shownBody is a request body as approvers see it: a Secret's is not
// shown (it holds the values), nor one of a resource whose fields masks
// hide from this caller (approvers would read what the caller's masks
// hide); others up to maxShownBody bytes. The approval binds the whole
// body whatever is shown.
func shownBody(req *celpolicy.KubernetesRequest, body []byte, masked bool) string {
	sum := sha256.Sum256(body)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	if req.APIGroup == "" && req.Resource == "secrets" {
		return fmt.Sprintf("(a Secret body of %d bytes, not shown: it holds the secret's values; %s)", len(body), digest)
	}
	if masked {
		return fmt.Sprintf("(a body of %d bytes, not shown: masks hide fields of %s; %s)", len(body), req.Resource, digest)
	}
	if len(body) > maxShownBody {
		return fmt.Sprintf("%s... (%d bytes in all; %s)", body[:maxShownBody], len(body), digest)
	}
	return string(body)
}

// masksResource reports whether a decision masks fields of the request's
// resource, under whichever group it is served (fieldIn).
func masksResource(d celpolicy.Decision, req *celpolicy.KubernetesRequest) bool {
	for _, a := range d.Masks {
		if a.Target.Field == "" {
			continue
		}
		f, err := bundle.ParseKubernetesField(a.Target.Field)
		if err != nil {
			return true
		}
		if _, ok := fieldIn(f, req); ok {
			return true
		}
	}
	return false
}

// requestHash binds an approval to one API request: each part
// length-prefixed, under a version tag.
func requestHash(method, path, query, contentType string, body []byte) string {
	h := sha256.New()
	h.Write([]byte("gatehouse/kubernetes/v1\x00"))
	for _, part := range [][]byte{[]byte(method), []byte(path), []byte(query), []byte(contentType), body} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}
