package postgres

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestSyncSentWithACopyIsIgnoredByPostgres: a client may send
// Bind, Execute (COPY ... FROM STDIN) and Sync together, before it knows the
// statement is a COPY (libpq's PQexecParams does). PostgreSQL, in copy-in
// mode, ignores that Sync; only the Sync after CopyDone is answered. The
// gateway must count the same, or its queue stays a batch behind: the next
// results would be paired with the wrong requests. An attacker then lines up
// an error at a stale Sync and a batch whose Execute the gateway does not
// mask, ahead of one it does, and reads masked rows in the clear.
func TestSyncSentWithACopyIsIgnoredByPostgres(t *testing.T) {
	e := startEnv(t)
	allowCopy(t, e)
	conn, fe := rawSession(t, e, "billing-service")
	send(t, fe, &pgproto3.Parse{Name: "cp", Query: "COPY billing.invoices (order_id, amount) FROM STDIN"},
		&pgproto3.Bind{PreparedStatement: "cp"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	waitCopyIn(t, conn, fe)
	send(t, fe, &pgproto3.CopyData{Data: []byte("1\t1\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
	if tr, _, to := collect(t, conn, fe, 5*time.Second); to || len(tr) < 2 || tr[len(tr)-2] != "C(COPY 1)" {
		t.Fatalf("copy: %v (timed out: %v)", tr, to)
	}

	// The attack: an error in a batch whose Execute is unmasked, then a
	// masked read, pipelined.
	send(t, fe, &pgproto3.Parse{Name: "ids", Query: "SELECT id FROM customers WHERE id = $1"}, &pgproto3.Sync{})
	if tr, _, _ := collect(t, conn, fe, 5*time.Second); strings.Contains(strings.Join(tr, " "), "E(") {
		t.Fatalf("prepare: %v", tr)
	}
	send(t, fe,
		&pgproto3.Bind{PreparedStatement: "ids", Parameters: [][]byte{[]byte("not a number")}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Query{String: "SELECT email FROM customers ORDER BY id"})
	tr, _, _ := collect(t, conn, fe, 5*time.Second)
	if !strings.Contains(strings.Join(tr, " "), "22P02") {
		t.Fatalf("the failing batch: %v", tr)
	}
	tr, vals, to := collect(t, conn, fe, 5*time.Second)
	if to || len(vals) != 2 {
		t.Fatalf("the masked read after the copy: %v %q (timed out: %v)", tr, vals, to)
	}
	for _, v := range vals {
		if strings.Contains(v, "jane.doe") || strings.Contains(v, "raj@") {
			t.Fatalf("a masked column went out in the clear: %q (trace %v)", vals, tr)
		}
	}
	if vals[0] != "j***@example.com" {
		t.Fatalf("the masked read after the copy: %q", vals)
	}
}

// TestHeldExecuteAfterASkippedBatch: while the upstream skips to the Sync of
// a failed batch, a request pushed behind that Sync is not skipped: it is the
// next batch's, and runs. An Execute that needs approval there must be held,
// not taken for skipped and forwarded.
func TestHeldExecuteAfterASkippedBatch(t *testing.T) {
	q := newQueue()
	q.push(&slot{kind: slotBind})
	q.push(&slot{kind: slotSync})
	q.pop() // the Bind failed: the upstream skips to the Sync
	q.skip()
	hd := &slot{kind: slotDescribe, hidden: true, ready: make(chan *resultDesc, 1)}
	q.push(hd)
	select {
	case d := <-hd.ready:
		t.Fatalf("a Describe behind the skipped batch's Sync was resolved at once (%v): it will be answered", d)
	default:
	}
	// Pushed before that Sync, it is skipped, and told so at once.
	q2 := newQueue()
	q2.push(&slot{kind: slotBind})
	q2.pop()
	q2.skip()
	hd2 := &slot{kind: slotDescribe, hidden: true, ready: make(chan *resultDesc, 1)}
	q2.push(hd2)
	select {
	case d := <-hd2.ready:
		if d != nil {
			t.Fatalf("a skipped Describe got a layout: %v", d)
		}
	case <-time.After(time.Second):
		t.Fatal("a Describe the upstream skips was never resolved")
	}
}
