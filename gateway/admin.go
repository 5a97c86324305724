package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
)

// adminHandler is the admin listener's API: health, readiness, metrics,
// bundle status and approvals.
func (g *Gateway) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", g.readyz)
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
		for name, t := range map[string]*time.Time{"last_attempt": g.store.Stats.LastAttempt.Load(),
			"last_success": g.store.Stats.LastSuccess.Load(), "last_error_at": g.store.Stats.LastErrorAt.Load()} {
			if t != nil {
				status[name] = t.UTC().Format(time.RFC3339Nano)
			}
		}
		if a := g.store.Current(); a != nil {
			status["revision"], status["digest"], status["key_id"] = a.Revision, a.Digest, a.KeyID
			status["loaded_at"], status["source"] = a.LoadedAt.UTC().Format(time.RFC3339), a.Source
		}
		g.bundleSourceStatus(status)
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

// readyz says whether traffic should come here: a bundle is loaded and not
// older than admin.max_bundle_age (for a bundle url: not confirmed by the
// url for longer), and the recorder can write (its last fdatasync did not
// fail, and its file system has admin.ready_disk_free left), since a
// gateway that cannot record refuses every session. Each upstream's
// reachability is reported too, but does not make the gateway unready:
// other resources may still be served.
func (g *Gateway) readyz(w http.ResponseWriter, r *http.Request) {
	var problems, notes []string
	a := g.store.Current()
	switch {
	case a == nil:
		problems = append(problems, "no policy bundle loaded")
	case g.cfg.Admin.MaxBundleAge > 0 && time.Since(g.store.ConfirmedAt()) > g.cfg.Admin.MaxBundleAge:
		problems = append(problems, g.staleBundle(a))
	}
	if err := g.rec.Healthy(); err != nil {
		problems = append(problems, "the session recorder cannot record: "+err.Error())
	}
	if msg := g.uploadsBehind(); msg != "" {
		problems = append(problems, msg)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(g.rec.Dir(), &fs); err != nil {
		problems = append(problems, "the recordings' file system cannot be read: "+err.Error())
	} else if free := int64(fs.Bavail) * int64(fs.Bsize); free < g.cfg.Admin.ReadyDiskFree {
		problems = append(problems, fmt.Sprintf("the recordings' file system has %d bytes free, under admin.ready_disk_free (%d): new sessions would be refused", free, g.cfg.Admin.ReadyDiskFree))
	}
	notes = g.upstreams.report(r.Context(), a)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		for _, p := range problems {
			_, _ = io.WriteString(w, "not ready: "+p+"\n")
		}
	} else {
		_, _ = io.WriteString(w, "ok\n")
	}
	for _, n := range notes {
		_, _ = io.WriteString(w, n+"\n")
	}
}

// upstreamProbe reports each upstream's reachability (a TCP connection),
// at most every probeEvery, so that a busy health checker cannot make the
// gateway hammer the databases.
type upstreamProbe struct {
	mu    sync.Mutex
	at    time.Time
	rev   uint64
	lines []string
}

const probeEvery = 10 * time.Second

func (p *upstreamProbe) report(ctx context.Context, a *bundlestore.Active) []string {
	if a == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rev == a.Revision && time.Since(p.at) < probeEvery {
		return p.lines
	}
	targets := map[string]string{}
	m := &a.Payload.Model
	for _, r := range m.Postgres {
		targets["postgres "+r.Name] = r.Address
	}
	for _, r := range m.SSHHosts {
		targets["ssh_host "+r.Name] = r.Address
	}
	names := make([]string, 0, len(targets))
	for n := range targets {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]string, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: time.Second}
			c, err := d.DialContext(ctx, "tcp", targets[n])
			if err != nil {
				out[i] = fmt.Sprintf("upstream %s (%s): unreachable: %s", n, targets[n], strings.TrimSpace(err.Error()))
				return
			}
			c.Close()
			out[i] = fmt.Sprintf("upstream %s (%s): reachable", n, targets[n])
		}()
	}
	wg.Wait()
	p.at, p.rev, p.lines = time.Now(), a.Revision, out
	return out
}
