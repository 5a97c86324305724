package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
	"github.com/gatehouse-dev/gatehouse/internal/clock"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// TestDecisionCache: a decision reused for a statement of the same shape is
// the decision a fresh evaluation gives, before and after a bundle swap; a
// rule that reads the time is never served from the cache.
func TestDecisionCache(t *testing.T) {
	clk := clock.NewFake(time.Now())
	e := startEnvClock(t, clk)
	cs, ref := e.core.Admit(context.Background(), core.Admission{Protocol: Protocol, Kind: bundle.KindPostgres, Resource: "orders",
		Token: e.issuer.Token(t, "analytics-job", "gatehouse"), ClientAddr: "test"})
	if ref != nil {
		t.Fatal(ref.Message)
	}
	defer cs.End("test done")
	fresh := func(sql string) celpolicy.Decision {
		active := e.core.Bundles().Current()
		d := active.Policy.Decide(&celpolicy.Input{Identity: cs.Identity(), Resource: "orders", Request: sqlfacts.Query(sql), Now: clk.Now()})
		return d
	}
	same := func(a, b celpolicy.Decision) bool {
		a.Masking, b.Masking = nil, nil
		return reflect.DeepEqual(a, b)
	}
	for i := 0; i < 3; i++ {
		sql := fmt.Sprintf("SELECT count(*) FROM orders WHERE id = %d", i)
		req := sqlfacts.Query(sql)
		if req.CacheKey() == "" {
			t.Fatalf("%q has no cache key", sql)
		}
		if got, want := cs.Judge(req), fresh(sql); !same(got, want) {
			t.Fatalf("%q: cached %+v, fresh %+v", sql, got, want)
		}
	}
	// A swap that denies: the next decision is the new bundle's.
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `identities = ["analytics-job", "pci-auditor", "billing-service"]`, `identities = ["pci-auditor", "billing-service"]`, 1))
	d := cs.Judge(sqlfacts.Query("SELECT count(*) FROM orders WHERE id = 7"))
	if d.Effect != bundle.EffectDeny || !same(d, fresh("SELECT count(*) FROM orders WHERE id = 7")) {
		t.Fatalf("after a swap: %+v", d)
	}
	// A rule that reads the time: the decision follows the clock.
	deadline := clk.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	e.publish(t, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `s.locking == ''`, `s.locking == '' && now < timestamp('`+deadline+`')`, 1))
	if d := cs.Judge(sqlfacts.Query("SELECT count(*) FROM orders WHERE id = 8")); d.Effect != bundle.EffectAllow {
		t.Fatalf("before the deadline: %+v", d)
	}
	clk.Advance(2 * time.Hour)
	if d := cs.Judge(sqlfacts.Query("SELECT count(*) FROM orders WHERE id = 9")); d.Effect != bundle.EffectDeny {
		t.Fatalf("a decision that reads the time was served from the cache: %+v", d)
	}
}

// TestCachedDecisionNamesItsOwnText: a decision served from the cache
// carries a mask plan that names the request's own text, not the text the
// plan was first decided for (the constants differ). The recording shows
// each statement's plan.
func TestCachedDecisionNamesItsOwnText(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	c, err := pgx.Connect(ctx, e.connString(e.issuer.Token(t, "analytics-job", "gatehouse")))
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for i := 1; i <= 3; i++ {
		sql := fmt.Sprintf("SELECT email FROM customers WHERE id = %d", i)
		texts = append(texts, sql)
		if _, err := c.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
	}
	c.Close(ctx)
	ss := waitSealed(t, e, 1)
	evs, err := recorder.ReadEvents(ss[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, ev := range evs {
		if ev.Type != recorder.TypeRequest {
			continue
		}
		var req celpolicy.PostgresRequest
		if err := json.Unmarshal(ev.Request, &req); err != nil {
			t.Fatal(err)
		}
		if req.Masking == nil || len(req.Masking.Statements) != 1 || !req.Masking.Masked() {
			t.Fatalf("%q: recorded plan %+v", ev.Text, req.Masking)
		}
		if got := req.Masking.Statements[0].Text; got != ev.Text {
			t.Errorf("the plan recorded for %q names %q", ev.Text, got)
		}
		seen = append(seen, ev.Text)
	}
	if !slices.Equal(seen, texts) {
		t.Fatalf("recorded %q, ran %q", seen, texts)
	}
}

// TestDecisionCacheByPosition: DISTINCT ON (1) and DISTINCT ON (3) over *
// normalize alike, and PostgreSQL reads each as a column position: the
// first (id) is allowed, the second (email, masked) must be refused, not
// served the first's cached decision.
func TestDecisionCacheByPosition(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	c := e.connect(t, "analytics-job")
	defer c.Close(ctx)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		if _, err := c.Exec(ctx, "SELECT DISTINCT ON (1) * FROM customers", mode); err != nil {
			t.Fatalf("%v: DISTINCT ON (1): %v", mode, err)
		}
		for _, sql := range []string{"SELECT DISTINCT ON (3) * FROM customers", "SELECT id, email FROM customers GROUP BY (1, 2)"} {
			_, err := c.Exec(ctx, sql, mode)
			if pgCode(err) != "42501" || !strings.Contains(err.Error(), "DISTINCT") && !strings.Contains(err.Error(), "GROUP BY") {
				t.Fatalf("%v: %s: %v", mode, sql, err)
			}
		}
	}
}
