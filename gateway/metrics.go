package gateway

import (
	"net/http"

	"github.com/gatehouse-dev/gatehouse/gateway/postgres"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// collector exposes the gateway's counters to Prometheus. It reads the
// counters the components keep anyway, so there is no global registry and
// nothing to keep in step.
type collector struct{ g *Gateway }

var (
	descSessions       = prometheus.NewDesc("gatehouse_sessions_total", "Sessions opened (after authentication and the connect decision).", nil, nil)
	descActive         = prometheus.NewDesc("gatehouse_sessions_active", "Sessions open now.", nil, nil)
	descAuthFailures   = prometheus.NewDesc("gatehouse_auth_failures_total", "Connections refused because the token did not verify or the caller did not resolve.", nil, nil)
	descConnectDenied  = prometheus.NewDesc("gatehouse_connections_denied_total", "Connections the policy refused (the connect request was denied).", nil, nil)
	descStatements     = prometheus.NewDesc("gatehouse_statements_total", "Statements decided, by decision.", []string{"decision"}, nil)
	descReloads        = prometheus.NewDesc("gatehouse_bundle_reloads_total", "Bundles activated.", nil, nil)
	descReloadFailures = prometheus.NewDesc("gatehouse_bundle_reload_failures_total", "Bundles refused (bad signature, rollback, schema, CEL).", nil, nil)
	descRevision       = prometheus.NewDesc("gatehouse_bundle_revision", "Revision of the active bundle (0: none).", nil, nil)
	descRecErrors      = prometheus.NewDesc("gatehouse_recorder_errors_total", "Recording writes that failed: a statement's refuses the statement, a start's the session; a result's leaves a gap the recording reports.", nil, nil)
	descRecLatency     = prometheus.NewDesc("gatehouse_recorder_write_seconds", "Time to make a statement's event durable (successful writes).", nil, nil)
	descReviewed       = prometheus.NewDesc("gatehouse_statements_reviewed_total", "Statements a review decision sent to approvers (or an earlier approval released); each also counts in gatehouse_statements_total by how it ended.", nil, nil)
	descApprovals      = prometheus.NewDesc("gatehouse_approvals", "Approval requests kept in the data directory, by state.", []string{"state"}, nil)
	descWebhooks       = prometheus.NewDesc("gatehouse_approval_webhook_deliveries_total", "Approval webhook deliveries, by result (delivered, failed after retries, dropped on a full queue).", []string{"result"}, nil)
	descRecHealthy     = prometheus.NewDesc("gatehouse_recorder_healthy", "1 while the recorder can record; 0 after a failed fdatasync, until restart (every statement is refused).", nil, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessions, descActive, descAuthFailures, descConnectDenied, descStatements, descReloads, descReloadFailures, descRevision, descRecErrors, descRecLatency, descRecHealthy, descReviewed, descApprovals, descWebhooks} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := &c.g.pg.Stats
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.CounterValue, float64(st.Sessions.Load()))
	ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(st.ActiveSession.Load()))
	ch <- prometheus.MustNewConstMetric(descAuthFailures, prometheus.CounterValue, float64(st.AuthFailures.Load()))
	ch <- prometheus.MustNewConstMetric(descConnectDenied, prometheus.CounterValue, float64(st.ConnectDenied.Load()))
	ch <- prometheus.MustNewConstMetric(descStatements, prometheus.CounterValue, float64(st.Allowed.Load()), "allow")
	ch <- prometheus.MustNewConstMetric(descStatements, prometheus.CounterValue, float64(st.Denied.Load()), "deny")
	ch <- prometheus.MustNewConstMetric(descReviewed, prometheus.CounterValue, float64(st.Reviewed.Load()))
	for s, n := range c.g.approvals.Counts() {
		ch <- prometheus.MustNewConstMetric(descApprovals, prometheus.GaugeValue, float64(n), string(s))
	}
	ns := &c.g.notifier.Stats
	ch <- prometheus.MustNewConstMetric(descWebhooks, prometheus.CounterValue, float64(ns.Delivered.Load()), "delivered")
	ch <- prometheus.MustNewConstMetric(descWebhooks, prometheus.CounterValue, float64(ns.Failed.Load()), "failed")
	ch <- prometheus.MustNewConstMetric(descWebhooks, prometheus.CounterValue, float64(ns.Dropped.Load()), "dropped")
	ch <- prometheus.MustNewConstMetric(descReloads, prometheus.CounterValue, float64(c.g.store.Stats.Reloads.Load()))
	ch <- prometheus.MustNewConstMetric(descReloadFailures, prometheus.CounterValue, float64(c.g.store.Stats.ReloadFailures.Load()))
	rev := 0.0
	if a := c.g.store.Current(); a != nil {
		rev = float64(a.Revision)
	}
	ch <- prometheus.MustNewConstMetric(descRevision, prometheus.GaugeValue, rev)
	ch <- prometheus.MustNewConstMetric(descRecErrors, prometheus.CounterValue, float64(st.RecorderErrors.Load()))
	healthy := 1.0
	if c.g.rec.Healthy() != nil {
		healthy = 0
	}
	ch <- prometheus.MustNewConstMetric(descRecHealthy, prometheus.GaugeValue, healthy)
	buckets := make(map[float64]uint64, len(postgres.RecordBounds))
	var cum uint64
	for i, b := range postgres.RecordBounds {
		cum += uint64(st.RecordBuckets[i].Load())
		buckets[b.Seconds()] = cum
	}
	// The count includes the overflow bucket, so it is read after the
	// buckets and never less than the last cumulative value.
	count := cum + uint64(st.RecordBuckets[len(postgres.RecordBounds)].Load())
	ch <- prometheus.MustNewConstHistogram(descRecLatency, count, float64(st.RecordNanos.Load())/1e9, buckets)
}

func (g *Gateway) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{g})
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
