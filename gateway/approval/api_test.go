package approval_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
)

// auditor is in the admin group only.
var auditor = approval.Principal{Name: "auditor", Issuer: issuer, Subject: "sub-auditor", Groups: []string{"audit"}}

// tokens is what the fake authenticator knows; anything else is rejected.
var tokens = map[string]approval.Principal{
	"tok-alice":   alice,
	"tok-bob":     bob,
	"tok-carol":   carol,
	"tok-erin":    erin,
	"tok-mallory": mallory,
	"tok-auditor": auditor,
}

func fakeAuthenticate(_ context.Context, token string) (approval.Principal, error) {
	p, ok := tokens[token]
	if !ok {
		return approval.Principal{}, errors.New("signature invalid")
	}
	return p, nil
}

// apiFixture is an API over a store holding three pending requests by
// alice: one needing a dba, one needing two dbas, one needing security.
type apiFixture struct {
	store           *approval.FileStore
	mux             *http.ServeMux
	oneDBA, twoDBAs approval.Request
	security        approval.Request
}

func newAPI(t *testing.T, edit ...func(*approval.API)) *apiFixture {
	t.Helper()
	clock := newClock()
	f := &apiFixture{store: openStore(t, t.TempDir(), approval.WithClock(clock))}
	open := func(hash string, count int, groups ...string) approval.Request {
		in := request(clock.Now())
		in.Hash = hash
		in.Needs = []approval.Need{{Rule: "rule-" + hash, Reason: "because", Groups: groups, Count: count}}
		r := mustOpen(t, f.store, in)
		clock.Advance(1) // distinct CreatedAt: List is newest first
		return r
	}
	f.oneDBA = open("h1", 1, "dba")
	f.twoDBAs = open("h2", 2, "dba")
	f.security = open("h3", 1, "security")

	api := &approval.API{
		Store:          f.store,
		Authenticate:   fakeAuthenticate,
		ApproverGroups: func() []string { return []string{"dba", "security"} },
		AdminGroups:    []string{"audit"},
	}
	for _, e := range edit {
		e(api)
	}
	f.mux = http.NewServeMux()
	api.Register(f.mux)
	return f
}

type response struct {
	code   int
	header http.Header
	body   []byte
}

// do calls the API with token as the bearer ("" for no Authorization
// header) and body as the JSON body ("" for none).
func (f *apiFixture) do(t *testing.T, method, path, token, body string) response {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if body == "" {
		req = httptest.NewRequest(method, path, nil)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	f.mux.ServeHTTP(w, req)
	return response{code: w.Code, header: w.Header(), body: w.Body.Bytes()}
}

func (r response) request(t *testing.T) approval.Request {
	t.Helper()
	var out approval.Request
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatalf("response is not a request: %v\n%s", err, r.body)
	}
	return out
}

func (r response) list(t *testing.T) []string {
	t.Helper()
	var out struct {
		Approvals *[]approval.Request `json:"approvals"`
	}
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatalf("response is not a list: %v\n%s", err, r.body)
	}
	if out.Approvals == nil {
		t.Fatalf(`"approvals" is missing or null: %s`, r.body)
	}
	return requestIDs(*out.Approvals)
}

func (r response) errorText(t *testing.T) string {
	t.Helper()
	var out approval.ErrorBody
	if err := json.Unmarshal(r.body, &out); err != nil || out.Error == "" {
		t.Fatalf("response is not an error body: %v\n%s", err, r.body)
	}
	return out.Error
}

func (r response) want(t *testing.T, code int) response {
	t.Helper()
	if r.code != code {
		t.Fatalf("status %d, want %d: %s", r.code, code, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	return r
}

func TestAPIAuthentication(t *testing.T) {
	f := newAPI(t)
	endpoints := []struct{ method, path string }{
		{http.MethodGet, "/v1/approvals"},
		{http.MethodGet, "/v1/approvals/" + f.oneDBA.ID},
		{http.MethodPost, "/v1/approvals/" + f.oneDBA.ID + "/approve"},
		{http.MethodPost, "/v1/approvals/" + f.oneDBA.ID + "/deny"},
	}
	tests := map[string]struct {
		authorization string
		wantChallenge string
	}{
		"no header":     {"", `Bearer realm="gatehouse"`},
		"basic auth":    {"Basic Ym9iOnB3", `Bearer realm="gatehouse"`},
		"bearer, empty": {"Bearer    ", `Bearer realm="gatehouse"`},
		"no scheme":     {"tok-bob", `Bearer realm="gatehouse"`},
		"unknown token": {"Bearer tok-forged", `Bearer realm="gatehouse", error="invalid_token"`},
		"expired token": {"Bearer tok-bob-expired", `Bearer realm="gatehouse", error="invalid_token"`},
	}
	for name, tc := range tests {
		for _, e := range endpoints {
			t.Run(name+" "+e.method+" "+e.path, func(t *testing.T) {
				req := httptest.NewRequest(e.method, e.path, strings.NewReader(`{"comment": "x"}`))
				if tc.authorization != "" {
					req.Header.Set("Authorization", tc.authorization)
				}
				w := httptest.NewRecorder()
				f.mux.ServeHTTP(w, req)
				r := response{code: w.Code, header: w.Header(), body: w.Body.Bytes()}
				r.want(t, http.StatusUnauthorized)
				if got := r.header.Get("WWW-Authenticate"); got != tc.wantChallenge {
					t.Errorf("WWW-Authenticate %q, want %q", got, tc.wantChallenge)
				}
				r.errorText(t)
			})
		}
	}
	if got := get(f.store, f.oneDBA.ID); got.State != approval.Pending || len(got.Votes) != 0 {
		t.Errorf("unauthenticated calls changed the request: %+v", got)
	}

	// The scheme is case-insensitive, and the token is trimmed.
	req := httptest.NewRequest(http.MethodGet, "/v1/approvals", nil)
	req.Header.Set("Authorization", "bearer  tok-bob ")
	w := httptest.NewRecorder()
	f.mux.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		t.Errorf("lower-case bearer: %d %s", w.Code, w.Body)
	}
}

func TestAPIForbidsThoseInNoApproverOrAdminGroup(t *testing.T) {
	f := newAPI(t)
	for _, c := range []struct{ method, path, body string }{
		{http.MethodGet, "/v1/approvals", ""},
		{http.MethodGet, "/v1/approvals/" + f.oneDBA.ID, ""},
		{http.MethodGet, "/v1/approvals/ap-unknown", ""},
		{http.MethodPost, "/v1/approvals/" + f.oneDBA.ID + "/approve", ""},
		{http.MethodPost, "/v1/approvals/" + f.oneDBA.ID + "/deny", `{"comment": "no"}`},
	} {
		r := f.do(t, c.method, c.path, "tok-mallory", c.body).want(t, http.StatusForbidden)
		if msg := r.errorText(t); !strings.Contains(msg, "mallory") {
			t.Errorf("%s %s: error %q does not say who was refused", c.method, c.path, msg)
		}
	}
	if got := get(f.store, f.oneDBA.ID); got.State != approval.Pending {
		t.Errorf("a forbidden call settled the request: %s", got.State)
	}
}

func TestAPIList(t *testing.T) {
	f := newAPI(t)
	dbaRequests := []string{f.twoDBAs.ID, f.oneDBA.ID}
	all := []string{f.security.ID, f.twoDBAs.ID, f.oneDBA.ID}

	tests := map[string]struct {
		token, query string
		want         []string
	}{
		"approver sees the requests of their groups":   {"tok-bob", "", dbaRequests},
		"approver, pending":                            {"tok-bob", "?state=pending", dbaRequests},
		"approver, approved":                           {"tok-bob", "?state=approved", []string{}},
		"other approver group":                         {"tok-erin", "?state=pending", []string{f.security.ID}},
		"admin sees everything":                        {"tok-auditor", "", all},
		"requester who approves sees their own, too":   {"tok-alice", "", all},
		"admin, denied (an empty list, not null)":      {"tok-auditor", "?state=denied", []string{}},
		"admin, expired":                               {"tok-auditor", "?state=expired", []string{}},
		"admin, cancelled":                             {"tok-auditor", "?state=cancelled", []string{}},
		"admin, no filter given as an empty parameter": {"tok-auditor", "?state=", all},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := f.do(t, http.MethodGet, "/v1/approvals"+tc.query, tc.token, "").want(t, http.StatusOK).list(t)
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("listed %v, want %v", got, tc.want)
			}
		})
	}

	for _, bad := range []string{"bogus", "PENDING", "settled"} {
		r := f.do(t, http.MethodGet, "/v1/approvals?state="+bad, "tok-bob", "").want(t, http.StatusBadRequest)
		if msg := r.errorText(t); !strings.Contains(msg, "pending") {
			t.Errorf("state=%s: error %q does not list the states", bad, msg)
		}
	}

	// The filter follows the store.
	f.do(t, http.MethodPost, "/v1/approvals/"+f.oneDBA.ID+"/approve", "tok-bob", "").want(t, http.StatusOK)
	if got := f.do(t, http.MethodGet, "/v1/approvals?state=approved", "tok-bob", "").want(t, http.StatusOK).list(t); len(got) != 1 || got[0] != f.oneDBA.ID {
		t.Errorf("approved: %v, want %s", got, f.oneDBA.ID)
	}
	if got := f.do(t, http.MethodGet, "/v1/approvals?state=pending", "tok-bob", "").want(t, http.StatusOK).list(t); len(got) != 1 || got[0] != f.twoDBAs.ID {
		t.Errorf("pending: %v, want %s", got, f.twoDBAs.ID)
	}
}

func TestAPIShow(t *testing.T) {
	f := newAPI(t)
	tests := map[string]struct {
		token, id string
		want      int
	}{
		"approver":                     {"tok-bob", f.oneDBA.ID, http.StatusOK},
		"approver of another group":    {"tok-bob", f.security.ID, http.StatusForbidden},
		"admin":                        {"tok-auditor", f.security.ID, http.StatusOK},
		"requester follows their own":  {"tok-alice", f.security.ID, http.StatusOK},
		"unknown id":                   {"tok-bob", "ap-doesnotexist00000", http.StatusNotFound},
		"unknown id, admin":            {"tok-auditor", "ap-doesnotexist00000", http.StatusNotFound},
		"security approver, their own": {"tok-erin", f.security.ID, http.StatusOK},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := f.do(t, http.MethodGet, "/v1/approvals/"+tc.id, tc.token, "").want(t, tc.want)
			if tc.want != http.StatusOK {
				r.errorText(t)
				return
			}
			got := r.request(t)
			if got.ID != tc.id || got.State != approval.Pending || got.Subject.Text == "" || got.Requester.Key() != alice.Key() {
				t.Errorf("showed %+v", got)
			}
		})
	}
}

func TestAPIApprove(t *testing.T) {
	f := newAPI(t)
	approve := "/v1/approvals/" + f.oneDBA.ID + "/approve"

	// The requester is in the dba group, but cannot approve their own.
	r := f.do(t, http.MethodPost, approve, "tok-alice", "").want(t, http.StatusForbidden)
	if msg := r.errorText(t); !strings.Contains(msg, "own") {
		t.Errorf("self-approval error %q", msg)
	}
	// An admin may read, but approving takes an approver group.
	f.do(t, http.MethodGet, "/v1/approvals/"+f.oneDBA.ID, "tok-auditor", "").want(t, http.StatusOK)
	f.do(t, http.MethodPost, approve, "tok-auditor", "").want(t, http.StatusForbidden)
	// An approver of another rule's group cannot either.
	f.do(t, http.MethodPost, approve, "tok-erin", "").want(t, http.StatusForbidden)
	f.do(t, http.MethodPost, "/v1/approvals/ap-doesnotexist00000/approve", "tok-bob", "").want(t, http.StatusNotFound)
	if got := get(f.store, f.oneDBA.ID); got.State != approval.Pending || len(got.Votes) != 0 {
		t.Fatalf("refused approvals changed the request: %+v", got)
	}

	got := f.do(t, http.MethodPost, approve, "tok-bob", `{"comment": "  checked the ticket  "}`).want(t, http.StatusOK).request(t)
	if got.ID != f.oneDBA.ID || got.State != approval.Approved {
		t.Fatalf("approve: %s %s", got.ID, got.State)
	}
	if len(got.Votes) != 1 || got.Votes[0].Approver.Key() != bob.Key() || got.Votes[0].Decision != "approve" || got.Votes[0].Comment != "checked the ticket" {
		t.Errorf("votes %+v, want bob's approval with the trimmed comment", got.Votes)
	}
	if stored := get(f.store, f.oneDBA.ID); stored.State != approval.Approved {
		t.Errorf("stored state %s", stored.State)
	}

	// After settlement: a conflict, whether approving or denying.
	f.do(t, http.MethodPost, approve, "tok-carol", "").want(t, http.StatusConflict).errorText(t)
	f.do(t, http.MethodPost, "/v1/approvals/"+f.oneDBA.ID+"/deny", "tok-carol", `{"comment": "too late"}`).want(t, http.StatusConflict)
	f.do(t, http.MethodPost, approve, "tok-bob", "").want(t, http.StatusConflict)
}

func TestAPITwoApprovalsAndAlreadyVoted(t *testing.T) {
	f := newAPI(t)
	approve := "/v1/approvals/" + f.twoDBAs.ID + "/approve"

	if got := f.do(t, http.MethodPost, approve, "tok-bob", "{}").want(t, http.StatusOK).request(t); got.State != approval.Pending {
		t.Fatalf("one of two approvals: %s", got.State)
	}
	r := f.do(t, http.MethodPost, approve, "tok-bob", "").want(t, http.StatusConflict)
	if msg := r.errorText(t); !strings.Contains(msg, "already voted") {
		t.Errorf("second vote error %q", msg)
	}
	if got := f.do(t, http.MethodPost, approve, "tok-carol", "").want(t, http.StatusOK).request(t); got.State != approval.Approved {
		t.Errorf("two of two approvals: %s", got.State)
	}
}

func TestAPIDeny(t *testing.T) {
	f := newAPI(t)
	deny := "/v1/approvals/" + f.twoDBAs.ID + "/deny"

	bad := map[string]string{
		"no body":               "",
		"empty object":          "{}",
		"blank comment":         `{"comment": "  \n "}`,
		"not JSON":              "no, because",
		"unknown field":         `{"comment": "no", "reason": "x"}`,
		"comment of wrong type": `{"comment": 5}`,
		"comment too long":      `{"comment": "` + strings.Repeat("x", approval.MaxCommentBytes+1) + `"}`,
	}
	for name, body := range bad {
		t.Run(name, func(t *testing.T) {
			f.do(t, http.MethodPost, deny, "tok-bob", body).want(t, http.StatusBadRequest).errorText(t)
		})
	}
	if got := get(f.store, f.twoDBAs.ID); got.State != approval.Pending || len(got.Votes) != 0 {
		t.Fatalf("bad denials changed the request: %+v", got)
	}
	// An approval with an over-long comment is refused as well.
	f.do(t, http.MethodPost, "/v1/approvals/"+f.twoDBAs.ID+"/approve", "tok-bob",
		`{"comment": "`+strings.Repeat("x", approval.MaxCommentBytes+1)+`"}`).want(t, http.StatusBadRequest)

	// Self-denial is refused like self-approval.
	f.do(t, http.MethodPost, deny, "tok-alice", `{"comment": "never mind"}`).want(t, http.StatusForbidden)

	// One approval, then one deny: denied.
	f.do(t, http.MethodPost, "/v1/approvals/"+f.twoDBAs.ID+"/approve", "tok-bob", "").want(t, http.StatusOK)
	longest := strings.Repeat("y", approval.MaxCommentBytes)
	got := f.do(t, http.MethodPost, deny, "tok-carol", `{"comment": "`+longest+`"}`).want(t, http.StatusOK).request(t)
	if got.State != approval.Denied || !strings.Contains(got.Outcome, longest) {
		t.Errorf("deny: %s, outcome %.60q…", got.State, got.Outcome)
	}
	f.do(t, http.MethodPost, deny, "tok-bob", `{"comment": "again"}`).want(t, http.StatusConflict)
}

func TestAPIReadAccessFromStoredRequests(t *testing.T) {
	// Without the active bundle's approver groups, the approvers of stored
	// requests may still act on them (a bundle changed under a pending
	// request), and nobody else gets in.
	f := newAPI(t, func(a *approval.API) { a.ApproverGroups = nil })
	if got := f.do(t, http.MethodGet, "/v1/approvals", "tok-erin", "").want(t, http.StatusOK).list(t); len(got) != 1 || got[0] != f.security.ID {
		t.Errorf("erin listed %v", got)
	}
	f.do(t, http.MethodPost, "/v1/approvals/"+f.security.ID+"/approve", "tok-erin", "").want(t, http.StatusOK)
	f.do(t, http.MethodGet, "/v1/approvals", "tok-mallory", "").want(t, http.StatusForbidden)
	f.do(t, http.MethodGet, "/v1/approvals", "tok-auditor", "").want(t, http.StatusOK)
}

func TestAPIMethodsAndPaths(t *testing.T) {
	f := newAPI(t)
	if r := f.do(t, http.MethodGet, "/v1/approvals/"+f.oneDBA.ID+"/approve", "tok-bob", ""); r.code != http.StatusMethodNotAllowed {
		t.Errorf("GET approve: %d, want 405", r.code)
	}
	if r := f.do(t, http.MethodDelete, "/v1/approvals/"+f.oneDBA.ID, "tok-bob", ""); r.code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE a request: %d, want 405", r.code)
	}
	if got := get(f.store, f.oneDBA.ID); got.State != approval.Pending {
		t.Errorf("a wrong method changed the request: %s", got.State)
	}
}
