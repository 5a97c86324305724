package postgres

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

func encode(msgs ...pgproto3.FrontendMessage) []byte {
	var b []byte
	for _, m := range msgs {
		b, _ = m.Encode(b)
	}
	return b
}

// FuzzClientStream sends arbitrary bytes as the message stream of a logged
// in client. The gateway must not crash, and a concurrent healthy session
// must keep working. It runs against real PostgreSQL.
func FuzzClientStream(f *testing.F) {
	f.Add(encode(&pgproto3.Query{String: "SELECT 1"}))
	f.Add(encode(&pgproto3.Query{String: "SELECT 1; DROP TABLE customers"}))
	f.Add(encode(&pgproto3.Parse{Name: "s", Query: "SELECT $1::int"}, &pgproto3.Bind{PreparedStatement: "s", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}))
	f.Add(encode(&pgproto3.Parse{Query: "DELETE FROM orders"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}, &pgproto3.Query{String: "SELECT 2"}))
	f.Add(encode(&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "nope"}, &pgproto3.Execute{Portal: "p"}, &pgproto3.Sync{}))
	f.Add(encode(&pgproto3.FunctionCall{Function: 1, Arguments: [][]byte{nil}}))
	f.Add(encode(&pgproto3.Query{String: "COPY billing.invoices (order_id, amount) FROM STDIN"}, &pgproto3.CopyData{Data: []byte("1\t2\n")}, &pgproto3.CopyDone{}))
	f.Add(encode(&pgproto3.Close{ObjectType: 'S', Name: "x"}, &pgproto3.Sync{}, &pgproto3.Terminate{}))
	for _, g := range garbage {
		f.Add(g)
	}
	e := startEnv(f)
	// Let the COPY seed run rather than be denied.
	e.publish(f, strings.Replace(e.policyF(e.issuer.URL, e.pg.Addr()), `'INSERT', 'UPDATE', 'DELETE', 'SELECT'`, `'COPY', 'INSERT', 'UPDATE', 'DELETE', 'SELECT'`, 1))
	healthy := e.connect(f, "billing-service")
	f.Fuzz(func(t *testing.T, data []byte) {
		conn, _ := rawSession(t, e, "billing-service")
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = conn.Write(data)
		buf := make([]byte, 4096)
		for {
			if _, err := conn.Read(buf); err != nil {
				break
			}
		}
		var n int
		if err := healthy.QueryRow(context.Background(), "SELECT count(*) FROM orders").Scan(&n); err != nil {
			t.Fatalf("the healthy session failed after %q: %v", data, err)
		}
		// A panic is contained to its session, but it is still a bug.
		if strings.Contains(e.logs.String(), "panic") {
			t.Fatalf("a session panicked on %q", data)
		}
	})
}
