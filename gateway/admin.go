package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
)

// adminHandler is the admin listener's API: health, readiness, metrics,
// bundle status and approvals.
func (g *Gateway) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if g.store.Current() == nil {
			http.Error(w, "no policy bundle loaded\n", http.StatusServiceUnavailable)
			return
		}
		if err := g.rec.Healthy(); err != nil {
			// Every request would be refused: send traffic elsewhere.
			http.Error(w, "the session recorder cannot record: "+err.Error()+"\n", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", g.metricsHandler())
	api := &approval.API{Store: g.approvals, Authenticate: g.authenticate, ApproverGroups: g.approverGroups, AdminGroups: g.cfg.Admin.AdminGroups}
	api.Register(mux)
	mux.HandleFunc("GET /v1/bundle", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		status := map[string]any{
			"reloads": g.store.Stats.Reloads.Load(), "reload_failures": g.store.Stats.ReloadFailures.Load(),
		}
		if e := g.store.Stats.LastError.Load(); e != nil {
			status["last_error"] = *e
		}
		if a := g.store.Current(); a != nil {
			status["revision"], status["digest"], status["key_id"] = a.Revision, a.Digest, a.KeyID
			status["loaded_at"], status["source"] = a.LoadedAt.UTC().Format(time.RFC3339), a.Source
		}
		_ = json.NewEncoder(w).Encode(status)
	})
	return mux
}

// authenticate verifies an admin API caller's token with the active
// bundle's identity providers and resolves it to an identity, as a caller
// of the data path would be.
func (g *Gateway) authenticate(ctx context.Context, token string) (approval.Principal, error) {
	a := g.store.Current()
	if a == nil {
		return approval.Principal{}, errors.New("no policy bundle is loaded, so no issuer is trusted yet")
	}
	v, err := a.Verifier.Verify(ctx, token)
	if err != nil {
		return approval.Principal{}, err
	}
	id, err := a.Policy.ResolveIdentity(v.Provider, v.Token)
	if err != nil {
		return approval.Principal{}, err
	}
	return approval.Principal{Name: id.Name, Issuer: id.Issuer, Subject: id.Subject, Groups: id.Groups}, nil
}

// approverGroups are the approver groups of the active bundle's review
// rules.
func (g *Gateway) approverGroups() []string {
	a := g.store.Current()
	if a == nil {
		return nil
	}
	var out []string
	for _, p := range a.Payload.Model.Policies {
		for _, r := range p.Rules {
			if r.Approval != nil {
				out = append(out, r.Approval.Groups...)
			}
		}
	}
	return out
}
