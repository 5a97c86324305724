package approval

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
)

// Authenticate verifies a bearer token and says who it belongs to.
type Authenticate func(ctx context.Context, token string) (Principal, error)

// API serves the approvals endpoints of the admin listener:
//
//	GET  /v1/approvals[?state=pending]
//	GET  /v1/approvals/{id}
//	POST /v1/approvals/{id}/approve   {"comment": "..."}
//	POST /v1/approvals/{id}/deny      {"comment": "..."}  (comment required)
//
// Every call needs a bearer OIDC token from a trusted issuer (401 without
// one). Approvers see and act on the requests of their groups; members of
// the admin groups see every request; anyone else gets 403.
type API struct {
	Store        Store
	Authenticate Authenticate
	// ApproverGroups are the approver groups of the active bundle's
	// review rules.
	ApproverGroups func() []string
	// AdminGroups may read every request (not approve: that takes an
	// approver group).
	AdminGroups []string
}

// Register adds the endpoints to mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/approvals", a.authed(a.list))
	mux.HandleFunc("GET /v1/approvals/{id}", a.authed(a.show))
	mux.HandleFunc("POST /v1/approvals/{id}/approve", a.authed(func(w http.ResponseWriter, r *http.Request, p Principal) { a.vote(w, r, p, true) }))
	mux.HandleFunc("POST /v1/approvals/{id}/deny", a.authed(func(w http.ResponseWriter, r *http.Request, p Principal) { a.vote(w, r, p, false) }))
}

// ErrorBody is the JSON of every error response.
type ErrorBody struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorBody{Error: msg})
}

func (a *API) authed(h func(http.ResponseWriter, *http.Request, Principal)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="gatehouse"`)
			writeError(w, http.StatusUnauthorized, "an OIDC bearer token is required (Authorization: Bearer TOKEN; the CLI reads GATEHOUSE_TOKEN or --token-file)")
			return
		}
		p, err := a.Authenticate(r.Context(), strings.TrimSpace(token))
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="gatehouse", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "token rejected: "+err.Error())
			return
		}
		if !a.mayRead(r.Context(), p) {
			writeError(w, http.StatusForbidden, "forbidden: "+p.String()+" is in no approver group of this gateway's review rules (groups ["+strings.Join(p.Groups, ", ")+"])")
			return
		}
		h(w, r, p)
	}
}

func intersects(a, b []string) bool {
	for _, x := range a {
		if slices.Contains(b, x) {
			return true
		}
	}
	return false
}

func (a *API) admin(p Principal) bool { return intersects(p.Groups, a.AdminGroups) }

// mayRead: approvers of the active bundle (or of a stored request),
// requesters following their requests, and admins may use the API at all.
func (a *API) mayRead(ctx context.Context, p Principal) bool {
	if a.admin(p) {
		return true
	}
	if a.ApproverGroups != nil && intersects(p.Groups, a.ApproverGroups()) {
		return true
	}
	mine, err := a.Store.List(ctx, func(r *Request) bool { return r.Eligible(p) || r.Requester.Same(p) })
	return err == nil && len(mine) > 0
}

// visible reports whether p may see r: its approvers, admins, and the
// requester (who may follow their own request).
func (a *API) visible(p Principal, r *Request) bool {
	return a.admin(p) || r.Eligible(p) || r.Requester.Same(p)
}

func (a *API) list(w http.ResponseWriter, r *http.Request, p Principal) {
	state := State(r.URL.Query().Get("state"))
	switch state {
	case "", Pending, Approved, Denied, Expired, Cancelled:
	default:
		writeError(w, http.StatusBadRequest, "state must be pending, approved, denied, expired or cancelled")
		return
	}
	out, err := a.Store.List(r.Context(), func(x *Request) bool {
		return (state == "" || x.State == state) && a.visible(p, x)
	})
	if err != nil {
		writeError(w, http.StatusInternalServerError, "the approval store cannot be read: "+err.Error())
		return
	}
	for i := range out {
		out[i] = out[i].Public()
	}
	if out == nil {
		out = []Request{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"approvals": out})
}

func (a *API) show(w http.ResponseWriter, r *http.Request, p Principal) {
	req, err := a.Store.Get(r.Context(), r.PathValue("id"))
	if errors.Is(err, ErrNotFound) {
		writeError(w, http.StatusNotFound, "no approval request "+r.PathValue("id"))
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "the approval store cannot be read: "+err.Error())
		return
	}
	if !a.visible(p, &req) {
		writeError(w, http.StatusForbidden, "forbidden: "+p.String()+" is not an approver of "+req.ID+" (it needs "+strings.Join(req.Groups(), " or ")+")")
		return
	}
	writeJSON(w, http.StatusOK, req.Public())
}

// VoteBody is the body of approve and deny.
type VoteBody struct {
	Comment string `json:"comment"`
}

// MaxCommentBytes bounds a comment.
const MaxCommentBytes = 4096

func (a *API) vote(w http.ResponseWriter, r *http.Request, p Principal, approve bool) {
	var body VoteBody
	if r.ContentLength != 0 {
		dec := json.NewDecoder(io.LimitReader(r.Body, MaxCommentBytes+1024))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil && !errors.Is(err, io.EOF) {
			writeError(w, http.StatusBadRequest, `the body must be JSON: {"comment": "..."}: `+err.Error())
			return
		}
	}
	body.Comment = strings.TrimSpace(body.Comment)
	if len(body.Comment) > MaxCommentBytes {
		writeError(w, http.StatusBadRequest, "the comment is over 4096 bytes")
		return
	}
	if !approve && body.Comment == "" {
		writeError(w, http.StatusBadRequest, "a denial needs a comment: the caller sees it and it is recorded")
		return
	}
	req, err := a.Store.Vote(r.Context(), r.PathValue("id"), p, approve, body.Comment)
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, req.Public())
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, "no approval request "+r.PathValue("id"))
	case errors.Is(err, ErrSelfApproval), errors.Is(err, ErrNotApprover):
		writeError(w, http.StatusForbidden, "forbidden: "+err.Error())
	case errors.Is(err, ErrSettled), errors.Is(err, ErrAlreadyVoted):
		writeError(w, http.StatusConflict, err.Error())
	default:
		// The vote could not be stored; nothing changed.
		writeError(w, http.StatusInternalServerError, "the vote could not be recorded: "+err.Error())
	}
}
