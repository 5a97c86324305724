package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var approvalID = regexp.MustCompile(`ap-[a-z2-7]{16}`)

// releaseResult holds, per path, the latencies of each released statement.
type releaseResult struct {
	// fromResponse: approve call's HTTP response read → the held
	// statement's CommandComplete read by the client on A. fromRequest:
	// the same, from the moment the approve call was sent.
	fromResponse, fromRequest map[string][]time.Duration
	// http is how long the approve calls themselves took.
	http map[string][]time.Duration
	// floor: the same INSERT into a table no rule holds, from sending it.
	floor []time.Duration
}

const (
	pathCross = "across replicas (approve on B)"
	pathLocal = "same replica (approve on A)"
)

// heldClient is a session on replica A whose held statements tell their
// approval id through the gateway's NOTICE.
type heldClient struct {
	conn   *pgx.Conn
	notice chan string
}

func (b *bench) connect(ctx context.Context, r *replica, onNotice func(*pgconn.Notice)) (*pgx.Conn, error) {
	host, port, err := net.SplitHostPort(r.g.Addr("postgres"))
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=bench-client dbname=bench sslmode=verify-full sslrootcert=%s connect_timeout=10",
		host, port, b.env.CAFile))
	if err != nil {
		return nil, err
	}
	cfg.Password = b.token
	if onNotice != nil {
		cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { onNotice(n) }
	}
	return pgx.ConnectConfig(ctx, cfg)
}

func (b *bench) release(ctx context.Context, n int) (*releaseResult, error) {
	a := b.replicas[0]
	hc := &heldClient{notice: make(chan string, 4)}
	conn, err := b.connect(ctx, a, func(nt *pgconn.Notice) {
		if id := approvalID.FindString(nt.Message + " " + nt.Detail + " " + nt.Hint); id != "" {
			select {
			case hc.notice <- id:
			default:
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to replica A: %w", err)
	}
	defer conn.Close(ctx)
	hc.conn = conn
	client := &http.Client{Timeout: 30 * time.Second}
	res := &releaseResult{fromResponse: map[string][]time.Duration{}, fromRequest: map[string][]time.Duration{}, http: map[string][]time.Duration{}}
	seq := 0
	const warmups = 3
	for i := -warmups; i < n; i++ {
		for _, p := range []struct {
			name     string
			approver *replica
		}{{pathCross, b.replicas[1]}, {pathLocal, a}} {
			seq++
			fromResp, fromReq, httpTook, err := b.releaseOne(ctx, hc, client, p.approver, seq)
			if err != nil {
				return nil, fmt.Errorf("%s, statement %d: %w", p.name, seq, err)
			}
			if i < 0 {
				continue
			}
			res.fromResponse[p.name] = append(res.fromResponse[p.name], fromResp)
			res.fromRequest[p.name] = append(res.fromRequest[p.name], fromReq)
			res.http[p.name] = append(res.http[p.name], httpTook)
		}
		seq++
		t0 := time.Now()
		if _, err := hc.conn.Exec(ctx, fmt.Sprintf("INSERT INTO notes (id, amount) VALUES (%d, %d.00)", seq, seq)); err != nil {
			return nil, fmt.Errorf("the unheld INSERT: %w", err)
		}
		if i >= 0 {
			res.floor = append(res.floor, time.Since(t0))
		}
		if i >= 0 && ((i+1)%10 == 0 || i+1 == n) {
			c, l := res.fromResponse[pathCross], res.fromResponse[pathLocal]
			fmt.Printf("  %3d/%d  last: across %s, same %s\n", i+1, n, ms(c[len(c)-1]), ms(l[len(l)-1]))
		}
	}
	return res, nil
}

// releaseOne runs one held INSERT on A, approves it through approver's
// admin API, and times the release.
func (b *bench) releaseOne(ctx context.Context, hc *heldClient, client *http.Client, approver *replica, seq int) (fromResp, fromReq, httpTook time.Duration, err error) {
	type outcome struct {
		at  time.Time
		err error
	}
	done := make(chan outcome, 1)
	sql := fmt.Sprintf("INSERT INTO payments (id, amount) VALUES (%d, %d.00)", seq, seq)
	go func() {
		_, err := hc.conn.Exec(ctx, sql) // no arguments: one simple Query
		done <- outcome{time.Now(), err}
	}()
	var id string
	select {
	case id = <-hc.notice:
	case o := <-done:
		return 0, 0, 0, fmt.Errorf("the INSERT ended before it was held: %v", o.err)
	case <-time.After(20 * time.Second):
		return 0, 0, 0, fmt.Errorf("no NOTICE of a hold within 20s")
	}
	body, _ := json.Marshal(map[string]string{"comment": "benchreplicas"})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+approver.g.AdminAddr+"/v1/approvals/"+id+"/approve", bytes.NewReader(body))
	if err != nil {
		return 0, 0, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+b.approver)
	req.Header.Set("Content-Type", "application/json")
	sent := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("approve %s: %w", id, err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	answered := time.Now()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, 0, fmt.Errorf("approve %s on %s: HTTP %d: %s", id, approver.g.AdminAddr, resp.StatusCode, bytes.TrimSpace(msg))
	}
	select {
	case o := <-done:
		if o.err != nil {
			return 0, 0, 0, fmt.Errorf("the approved INSERT %s failed: %w", id, o.err)
		}
		return o.at.Sub(answered), o.at.Sub(sent), answered.Sub(sent), nil
	case <-time.After(30 * time.Second):
		return 0, 0, 0, fmt.Errorf("approved %s, but the statement was not released within 30s", id)
	}
}
