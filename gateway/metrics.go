package gateway

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// collector exposes the gateway's counters to Prometheus. It reads the
// counters the components keep anyway, so there is no global registry and
// nothing to keep in step.
type collector struct{ g *Gateway }

var (
	protocolLabel      = []string{"protocol"}
	descSessions       = prometheus.NewDesc("gatehouse_sessions_total", "Sessions opened (after authentication and the connect decision), by protocol.", protocolLabel, nil)
	descActive         = prometheus.NewDesc("gatehouse_sessions_active", "Sessions open now, by protocol.", protocolLabel, nil)
	descAuthFailures   = prometheus.NewDesc("gatehouse_auth_failures_total", "Callers refused because the token did not verify or the caller did not resolve, by protocol.", protocolLabel, nil)
	descConnectDenied  = prometheus.NewDesc("gatehouse_connections_denied_total", "Sessions the policy refused (the connect request was denied), by protocol.", protocolLabel, nil)
	descRequests       = prometheus.NewDesc("gatehouse_requests_total", "Requests decided (statements, commands, API calls), by protocol and how they ended.", []string{"protocol", "decision"}, nil)
	descReviewed       = prometheus.NewDesc("gatehouse_requests_reviewed_total", "Requests a review decision sent to approvers (or an earlier approval released), by protocol; each also counts in gatehouse_requests_total by how it ended.", protocolLabel, nil)
	descReloads        = prometheus.NewDesc("gatehouse_bundle_reloads_total", "Bundles activated.", nil, nil)
	descReloadFailures = prometheus.NewDesc("gatehouse_bundle_reload_failures_total", "Bundles refused (bad signature, rollback, schema, CEL).", nil, nil)
	descRevision       = prometheus.NewDesc("gatehouse_bundle_revision", "Revision of the active bundle (0: none).", nil, nil)
	descBundleAge      = prometheus.NewDesc("gatehouse_bundle_age_seconds", "Seconds since the active bundle was created (its created_at).", nil, nil)
	descBundleStale    = prometheus.NewDesc("gatehouse_bundle_stale_seconds", "Seconds since the active bundle was last known current: its activation, or a later successful check of the bundle url that found it unchanged (a 304, or the same bundle). /readyz compares it with admin.max_bundle_age.", nil, nil)
	descBundleChecks   = prometheus.NewDesc("gatehouse_bundle_url_checks_total", "Checks of the bundle url, by result: fetched (a 200 whose bundle is now active), not_modified (a 304), error (the network, a timeout, an HTTP status, a body over the size limit, a bundle refused).", []string{"result"}, nil)
	descBundleFailing  = prometheus.NewDesc("gatehouse_bundle_url_consecutive_failures", "Failed checks of the bundle url since the last successful one (0: the last check succeeded); the wait between checks doubles with each.", nil, nil)
	descRecSyncs       = prometheus.NewDesc("gatehouse_recorder_syncs_total", "fdatasyncs that made recorded events durable (group commits and checkpoints); the latency histogram's count divided by this is how many requests one sync served.", nil, nil)
	descRecErrors      = prometheus.NewDesc("gatehouse_recorder_errors_total", "Recording writes that failed: a request's refuses the request, a start's the session; a result's leaves a gap the recording reports.", nil, nil)
	descRecLatency     = prometheus.NewDesc("gatehouse_recorder_write_seconds", "Time to make an event durable (successful writes).", nil, nil)
	descApprovals      = prometheus.NewDesc("gatehouse_approvals", "Approval requests kept, by state.", []string{"state"}, nil)
	descWebhooks       = prometheus.NewDesc("gatehouse_approval_webhook_deliveries_total", "Approval webhook deliveries, by result (delivered, failed after retries, dropped on a full queue).", []string{"result"}, nil)
	descLimited        = prometheus.NewDesc("gatehouse_sessions_refused_total", "Connections refused or closed by a limit, by protocol and limit (sessions, per_identity, per_resource, pending: the oldest unauthenticated connection closed for a new one, auth_failures).", []string{"protocol", "limit"}, nil)
	descKeyFetches     = prometheus.NewDesc("gatehouse_identity_key_fetches_total", "Fetches of identity providers' discovery documents and key sets.", nil, nil)
	descUploads        = prometheus.NewDesc("gatehouse_recordings_uploads_total", "Uploads to recorder.bucket, by object (recording, ledger) and result (ok; error: retried with backoff).", []string{"object", "result"}, nil)
	descUploadQueue    = prometheus.NewDesc("gatehouse_recordings_upload_pending", "Sealed recordings waiting for their upload to recorder.bucket.", nil, nil)
	descAnchorFailures = prometheus.NewDesc("gatehouse_recorder_anchor_failures_total", "Exports of ledger entries to recorder.anchor that failed (each is retried with a backoff; a conflict with another writer of an s3:// anchor's prefix counts here too).", nil, nil)
	descAnchorBehind   = prometheus.NewDesc("gatehouse_recorder_anchor_behind_entries", "Durable ledger entries recorder.anchor does not hold yet.", nil, nil)
	descIndexRows      = prometheus.NewDesc("gatehouse_sessions_index_rows_total", "Rows written to the session index in the state database (a session's start, then its uploaded recording).", nil, nil)
	descIndexPending   = prometheus.NewDesc("gatehouse_sessions_index_pending", "Session index rows waiting to be written (the state database was unreachable; retried with the uploads).", nil, nil)
	descIndexDropped   = prometheus.NewDesc("gatehouse_sessions_index_dropped_total", "Session start rows not queued because the index queue was full; those sessions are indexed once their recordings are uploaded.", nil, nil)
	descUploadOldest   = prometheus.NewDesc("gatehouse_recordings_upload_oldest_pending_seconds", "Seconds the oldest recording waiting for upload has waited (0: none); /readyz compares it with recorder.bucket.max_behind.", nil, nil)
	descRecHealthy     = prometheus.NewDesc("gatehouse_recorder_healthy", "1 while the recorder can record; 0 after a failed fdatasync, until restart (every request is refused).", nil, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessions, descActive, descAuthFailures, descConnectDenied, descRequests, descReviewed, descReloads, descReloadFailures, descRevision, descBundleAge, descBundleStale, descBundleChecks, descBundleFailing, descRecErrors, descRecSyncs, descRecLatency, descRecHealthy, descApprovals, descWebhooks, descLimited, descKeyFetches, descUploads, descUploadQueue, descUploadOldest, descIndexRows, descIndexPending, descIndexDropped, descAnchorFailures, descAnchorBehind} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	g := c.g
	// Every served protocol appears, with zeros before its first session.
	for _, l := range g.listeners {
		g.core.Stats(l.proxy.Kind())
	}
	for _, p := range g.core.Protocols() {
		st := g.core.Stats(p)
		ch <- prometheus.MustNewConstMetric(descSessions, prometheus.CounterValue, float64(st.Sessions.Load()), p)
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(st.Active.Load()), p)
		ch <- prometheus.MustNewConstMetric(descAuthFailures, prometheus.CounterValue, float64(st.AuthFailures.Load()), p)
		ch <- prometheus.MustNewConstMetric(descConnectDenied, prometheus.CounterValue, float64(st.ConnectDenied.Load()), p)
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(st.Allowed.Load()), p, "allow")
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(st.Denied.Load()), p, "deny")
		ch <- prometheus.MustNewConstMetric(descReviewed, prometheus.CounterValue, float64(st.Reviewed.Load()), p)
		for limit, n := range g.core.LimitStats(p) {
			ch <- prometheus.MustNewConstMetric(descLimited, prometheus.CounterValue, float64(n), p, limit)
		}
	}
	ch <- prometheus.MustNewConstMetric(descKeyFetches, prometheus.CounterValue, float64(g.store.Keys().Fetches.Load()))
	if counts, err := g.approvals.Counts(context.Background()); err == nil {
		for s, n := range counts {
			ch <- prometheus.MustNewConstMetric(descApprovals, prometheus.GaugeValue, float64(n), string(s))
		}
	}
	ns := &g.notifier.Stats
	ch <- prometheus.MustNewConstMetric(descWebhooks, prometheus.CounterValue, float64(ns.Delivered.Load()), "delivered")
	ch <- prometheus.MustNewConstMetric(descWebhooks, prometheus.CounterValue, float64(ns.Failed.Load()), "failed")
	ch <- prometheus.MustNewConstMetric(descWebhooks, prometheus.CounterValue, float64(ns.Dropped.Load()), "dropped")
	ch <- prometheus.MustNewConstMetric(descReloads, prometheus.CounterValue, float64(g.store.Stats.Reloads.Load()))
	ch <- prometheus.MustNewConstMetric(descReloadFailures, prometheus.CounterValue, float64(g.store.Stats.ReloadFailures.Load()))
	rev := 0.0
	if a := g.store.Current(); a != nil {
		rev = float64(a.Revision)
	}
	ch <- prometheus.MustNewConstMetric(descRevision, prometheus.GaugeValue, rev)
	if a := g.store.Current(); a != nil {
		if created, err := time.Parse(time.RFC3339, a.Payload.CreatedAt); err == nil {
			ch <- prometheus.MustNewConstMetric(descBundleAge, prometheus.GaugeValue, time.Since(created).Seconds())
		}
		ch <- prometheus.MustNewConstMetric(descBundleStale, prometheus.GaugeValue, time.Since(g.store.ConfirmedAt()).Seconds())
	}
	if g.cfg.Bundle.URL != "" {
		src := &g.store.Stats.Source
		ch <- prometheus.MustNewConstMetric(descBundleChecks, prometheus.CounterValue, float64(src.Fetched.Load()), "fetched")
		ch <- prometheus.MustNewConstMetric(descBundleChecks, prometheus.CounterValue, float64(src.NotModified.Load()), "not_modified")
		ch <- prometheus.MustNewConstMetric(descBundleChecks, prometheus.CounterValue, float64(src.Failures.Load()), "error")
		ch <- prometheus.MustNewConstMetric(descBundleFailing, prometheus.GaugeValue, float64(src.ConsecutiveFailures.Load()))
	}
	ch <- prometheus.MustNewConstMetric(descRecErrors, prometheus.CounterValue, float64(g.rec.Stats.Errors.Load()))
	ch <- prometheus.MustNewConstMetric(descRecSyncs, prometheus.CounterValue, float64(g.rec.Stats.Syncs.Load()))
	healthy := 1.0
	if g.rec.Healthy() != nil {
		healthy = 0
	}
	ch <- prometheus.MustNewConstMetric(descRecHealthy, prometheus.GaugeValue, healthy)
	if behind, ok := g.rec.AnchorBehind(); ok {
		ch <- prometheus.MustNewConstMetric(descAnchorFailures, prometheus.CounterValue, float64(g.rec.Stats.AnchorFailures.Load()))
		ch <- prometheus.MustNewConstMetric(descAnchorBehind, prometheus.GaugeValue, float64(behind))
	}
	if u := g.uploader; u != nil {
		ch <- prometheus.MustNewConstMetric(descUploads, prometheus.CounterValue, float64(u.Stats.Uploads.Load()), "recording", "ok")
		ch <- prometheus.MustNewConstMetric(descUploads, prometheus.CounterValue, float64(u.Stats.LedgerUploads.Load()), "ledger", "ok")
		ch <- prometheus.MustNewConstMetric(descUploads, prometheus.CounterValue, float64(u.Stats.Failures.Load()), "any", "error")
		n, oldest := u.Backlog()
		ch <- prometheus.MustNewConstMetric(descUploadQueue, prometheus.GaugeValue, float64(n))
		ch <- prometheus.MustNewConstMetric(descUploadOldest, prometheus.GaugeValue, oldest.Seconds())
		if g.index != nil {
			ch <- prometheus.MustNewConstMetric(descIndexRows, prometheus.CounterValue, float64(u.Stats.IndexRows.Load()))
			ch <- prometheus.MustNewConstMetric(descIndexPending, prometheus.GaugeValue, float64(u.Stats.IndexPending.Load()))
			ch <- prometheus.MustNewConstMetric(descIndexDropped, prometheus.CounterValue, float64(u.Stats.IndexDropped.Load()))
		}
	}
	buckets, count, sum := g.rec.Stats.Histogram()
	ch <- prometheus.MustNewConstHistogram(descRecLatency, count, sum, buckets)
}

func (g *Gateway) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{g})
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
