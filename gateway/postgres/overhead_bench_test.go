package postgres

import (
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
	"github.com/gatehouse-dev/gatehouse/internal/oidctest"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// The statement measured: the billing service reads a customer's email and
// card number, so the quickstart's two masks both apply (email partial,
// card redacted: billing is not in the pci group).
const (
	overheadSQL      = "SELECT email, card_number FROM customers WHERE id = 1"
	overheadParamSQL = "SELECT email, card_number FROM customers WHERE id = $1"
)

// customersOID is the relation OID the canned upstream gives customers;
// the catalog cache maps it to the quickstart's column names.
const customersOID = 16390

// BenchmarkStatementOverhead measures what the gateway adds to one
// statement, on the quickstart bundle (examples/quickstart, signed and
// activated through a real bundlestore) with the billing service's identity
// resolved by the bundle, and a real recorder writing the session's JSONL
// file into a temp dir. The temp dir follows TMPDIR: for fdatasync numbers
// that mean anything, point TMPDIR at the disk the gateway records to (a
// tmpfs makes fdatasync free).
//
// The simple protocol, one Query message:
//
//   - parse: sqlfacts.Query, the SQL-to-facts step of session.query.
//   - decide: the core's Session.Decide, the active bundle's Decide plus
//     the checks the gateway makes whatever the policy says.
//   - record, record-nosync: session.record, the statement event made
//     durable before the statement is forwarded; -nosync replaces the
//     recorder's fdatasync (recorder.WithSync) with nothing, leaving
//     encoding, hashing and write(2).
//   - request, request-nosync: session.requests itself handling one Query
//     message (check, parse, decide, record, queue, forward), up to the
//     moment the statement leaves for the upstream. This is the latency the
//     gateway adds before the database sees the statement.
//   - round-trip, round-trip-nosync: session.run, the whole session, both
//     of its sides, between a client and an upstream over in-memory pipes.
//     It adds the response side: resolving the result's columns (from the
//     catalog cache, as every statement after a revision's first does),
//     recording the masked columns, masking the row, and recording the
//     outcome; each record is made durable before the response that needs
//     it is forwarded.
//
// The extended protocol, a prepared statement executed again (Bind,
// Execute, Sync, as pgx sends for a cached statement). The session parses
// a statement once, at Parse, and keeps its facts with the statement
// (prepared.req); an Execute decides and records those facts again:
//
//   - prepare: session.requests handling Parse and Sync, and
//     session.response settling them with ParseComplete and
//     ReadyForQuery. Paid once per prepared statement; an allowed Parse is
//     not recorded.
//   - execute, execute-nosync: what session.execute does before it
//     forwards the Execute: resolve the portal, decide, record.
//   - round-trip, round-trip-nosync: session.run with Bind, Execute, Sync.
//     Because masks apply, execute describes the portal upstream in the
//     same batch, just before the Execute; the answer lays out the rows,
//     and nothing waits for it (before 2026-12-05 execute flushed the
//     Describe and waited: a network round trip per execution).
//
// Every benchmark that records reports records/op and record-ns/op from the
// recorder's own counters (Stats.Records, Stats.Nanos), so a total can
// be split into time spent making events durable and the rest. The
// round-trip benchmarks' B/op includes the client's and the canned
// upstream's encoding and decoding, which the gateway does not pay.
func BenchmarkStatementOverhead(b *testing.B) {
	r := newOverheadRig(b)
	ctx := context.Background()

	b.Run("simple", func(b *testing.B) {
		b.Run("parse", func(b *testing.B) {
			b.ReportAllocs()
			var req *celpolicy.PostgresRequest
			for b.Loop() {
				req = sqlfacts.Query(overheadSQL)
			}
			if req.Problem != "" || len(req.Statements) != 1 {
				b.Fatalf("the statement did not parse: %+v", req)
			}
		})
		b.Run("decide", func(b *testing.B) {
			s := r.session(b, true)
			req := sqlfacts.Query(overheadSQL)
			b.ReportAllocs()
			var d celpolicy.Decision
			for b.Loop() {
				d = s.cs.Decide(req, true)
			}
			mustAllowMasked(b, d)
		})
		for _, sync := range []bool{true, false} {
			b.Run("record"+nosync(sync), func(b *testing.B) {
				s := r.session(b, sync)
				req := sqlfacts.Query(overheadSQL)
				d := s.cs.Decide(req, true)
				mustAllowMasked(b, d)
				report := watchRecords(s.rec)
				b.ReportAllocs()
				for b.Loop() {
					if _, err := s.record("query", overheadSQL, req, d); err != nil {
						b.Fatal(err)
					}
				}
				report(b)
			})
		}
		for _, sync := range []bool{true, false} {
			b.Run("request"+nosync(sync), func(b *testing.B) {
				s := r.session(b, sync)
				in := attachFeed(s)
				msg := encodeMessages(b, &pgproto3.Query{String: overheadSQL})
				report := watchRecords(s.rec)
				b.ReportAllocs()
				for b.Loop() {
					in.buf = msg
					// requests handles the message, then returns at the
					// feed's end as it does when a client disconnects.
					if err := s.requests(ctx); !errors.Is(err, io.ErrUnexpectedEOF) {
						b.Fatalf("requests ended with %v, not at the feed's end", err)
					}
					// The slot would wait for the upstream's answer; the
					// response side is not running, so drop it.
					if sl := s.q.pop(); sl == nil || sl.kind != slotQuery || !sl.masking.plan.Masked() {
						b.Fatalf("the query was not forwarded with its masks: %+v", sl)
					}
				}
				report(b)
			})
		}
		for _, sync := range []bool{true, false} {
			b.Run("round-trip"+nosync(sync), func(b *testing.B) {
				s := r.session(b, sync)
				client := runSession(b, s)
				query := &pgproto3.Query{String: overheadSQL}
				var row []string
				exchange(b, client, &row, query)
				mustBeMasked(b, row)
				report := watchRecords(s.rec)
				b.ReportAllocs()
				for b.Loop() {
					exchange(b, client, nil, query)
				}
				report(b)
			})
		}
	})

	b.Run("extended", func(b *testing.B) {
		b.Run("prepare", func(b *testing.B) {
			s := r.session(b, true)
			in := attachFeed(s)
			// The unnamed statement, which a Parse may replace.
			msg := encodeMessages(b, &pgproto3.Parse{Query: overheadParamSQL}, &pgproto3.Sync{})
			answers := []pgproto3.BackendMessage{&pgproto3.ParseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}}
			b.ReportAllocs()
			for b.Loop() {
				in.buf = msg
				if err := s.requests(ctx); !errors.Is(err, io.ErrUnexpectedEOF) {
					b.Fatalf("requests ended with %v, not at the feed's end", err)
				}
				for _, m := range answers {
					if _, _, ok := s.response(m); !ok {
						b.Fatalf("%T did not settle", m)
					}
				}
			}
			if st, _, _ := s.names.resolve("S:", s.batch); st == nil || st.sql != overheadParamSQL {
				b.Fatal("the statement is not prepared")
			}
		})
		for _, sync := range []bool{true, false} {
			b.Run("execute"+nosync(sync), func(b *testing.B) {
				s := r.session(b, sync)
				in := attachFeed(s)
				// Prepare and bind as a client does, and settle both as
				// the upstream's completions do.
				in.buf = encodeMessages(b,
					&pgproto3.Parse{Name: "stmt1", Query: overheadParamSQL},
					&pgproto3.Bind{PreparedStatement: "stmt1", Parameters: [][]byte{[]byte("1")}})
				if err := s.requests(ctx); !errors.Is(err, io.ErrUnexpectedEOF) {
					b.Fatalf("requests ended with %v, not at the feed's end", err)
				}
				for _, m := range []pgproto3.BackendMessage{&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}} {
					if _, _, ok := s.response(m); !ok {
						b.Fatalf("%T did not settle", m)
					}
				}
				report := watchRecords(s.rec)
				b.ReportAllocs()
				for b.Loop() {
					// Mirrors session.execute up to the hidden Describe.
					_, p, ok := s.names.resolve("P:", s.batch)
					if !ok || p == nil || p.stmt == nil {
						b.Fatal("the portal is not bound")
					}
					d := s.cs.Decide(p.stmt.req, true)
					if _, err := s.record("execute", p.stmt.sql, p.stmt.req, d); err != nil {
						b.Fatal(err)
					}
					if d.Effect != bundle.EffectAllow {
						b.Fatalf("the execution is refused: %v", d.Reasons)
					}
				}
				report(b)
			})
		}
		for _, sync := range []bool{true, false} {
			b.Run("round-trip"+nosync(sync), func(b *testing.B) {
				s := r.session(b, sync)
				client := runSession(b, s)
				exchange(b, client, nil,
					&pgproto3.Parse{Name: "stmt1", Query: overheadParamSQL},
					&pgproto3.Describe{ObjectType: 'S', Name: "stmt1"},
					&pgproto3.Sync{})
				run := []pgproto3.FrontendMessage{
					&pgproto3.Bind{PreparedStatement: "stmt1", Parameters: [][]byte{[]byte("1")}},
					&pgproto3.Execute{},
					&pgproto3.Sync{},
				}
				var row []string
				exchange(b, client, &row, run...)
				mustBeMasked(b, row)
				report := watchRecords(s.rec)
				b.ReportAllocs()
				for b.Loop() {
					exchange(b, client, nil, run...)
				}
				report(b)
			})
		}
	})
}

func nosync(sync bool) string {
	if sync {
		return ""
	}
	return "-nosync"
}

// overheadRig is the quickstart bundle, active in a store, an issuer of
// tokens for it, and a recorder key: what every session of the benchmark
// shares, as a gateway's sessions do.
type overheadRig struct {
	store  *bundlestore.Store
	issuer *oidctest.Issuer
	recKey ed25519.PrivateKey
	log    *slog.Logger
}

// newOverheadRig signs examples/quickstart, with its identity provider
// pointed at a test issuer, and activates it through bundlestore.Apply,
// the path a gateway loads a bundle by.
func newOverheadRig(b testing.TB) *overheadRig {
	b.Helper()
	res, diags := hclconfig.Load("../../examples/quickstart")
	if diags.HasErrors() {
		b.Fatalf("quickstart: %v", diags)
	}
	issuer := oidctest.Start(b)
	for i := range res.Model.IdentityProviders {
		res.Model.IdentityProviders[i].Issuer = issuer.URL
	}
	p, err := bundle.NewPayload(*res.Model, bundle.BuildOptions{Revision: 1, CreatedAt: time.Unix(1764000000, 0), Compiler: "benchmark"})
	if err != nil {
		b.Fatal(err)
	}
	raw, err := bundle.EncodePayload(p)
	if err != nil {
		b.Fatal(err)
	}
	signKey, err := bundle.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	data, err := bundle.Sign(raw, signKey)
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	store := bundlestore.New(bundle.NewKeyring(signKey.Public().(ed25519.PublicKey)), "", bundlestore.WithLogger(log))
	if _, err := store.Apply(data, "examples/quickstart"); err != nil {
		b.Fatal(err)
	}
	recKey, err := bundle.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	return &overheadRig{store: store, issuer: issuer, recKey: recKey, log: log}
}

// benchSession is a session of the benchmark with its recorder, whose
// counters report what each operation made durable.
type benchSession struct {
	*session
	rec *recorder.Recorder
}

// session admits the billing service on orders through the core, as
// Server.startup does (the token verified, the identity resolved by the
// bundle, the recording started), with a Server and recorder of its own,
// so that its counters are its own. With sync false the recorder writes
// but does not fdatasync.
func (r *overheadRig) session(b testing.TB, sync bool) *benchSession {
	b.Helper()
	active := r.store.Current()
	var opts []recorder.Option
	if !sync {
		opts = append(opts, recorder.WithSync(func(*os.File) error { return nil }))
	}
	rec, err := recorder.Open(b.TempDir(), r.recKey, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rec.Close() })
	c := core.New(r.store, core.WithRecorder(rec), core.WithLogger(r.log))
	srv := New(Config{InsecurePlaintext: true}, c, WithLogger(r.log))
	// The catalog cache as the first statement of this revision leaves it:
	// every later statement resolves its result columns from it without
	// asking the upstream. Keys are canonical, as columnNames makes them.
	col := func(name string) string {
		return bundle.QuoteIdent("public") + "." + bundle.QuoteIdent("customers") + "." + bundle.QuoteIdent(name)
	}
	cat := &catalog{revision: active.Revision}
	cat.reset()
	cat.columns[customersOID] = map[uint16]string{1: col("id"), 2: col("name"), 3: col("email"), 4: col("card_number")}
	// And the lineage lookups the statement makes, as they are cached.
	searchPath := []string{"pg_catalog", "public"}
	cat.relations[strings.Join(searchPath, "\x00")+"\x01customers"] = cached[*sqlfacts.RelationInfo]{at: time.Now().Add(time.Hour),
		v: &sqlfacts.RelationInfo{Schema: "public", Name: "customers", Kind: "table", Columns: []string{"id", "name", "email", "card_number"}}}
	cat.operators["="] = cached[bool]{v: false, at: time.Now().Add(time.Hour)}                               // built in only
	cat.views[readThroughKey(searchPath, "customers")] = cached[readThroughs]{at: time.Now().Add(time.Hour)} // a table, no view
	srv.catalog.by["orders"] = cat
	var s *session
	cs, ref := c.Admit(context.Background(), core.Admission{Protocol: Protocol, Kind: bundle.KindPostgres, Resource: "orders",
		Token: r.issuer.Token(b, "billing-service", "gatehouse"), ClientAddr: "bench", Noun: "statement",
		Guard: func(req celpolicy.Request, d celpolicy.Decision) celpolicy.Decision {
			if s == nil {
				return d
			}
			return s.guard(req, d)
		}})
	if ref != nil {
		b.Fatalf("admission: %v", ref)
	}
	if cs.Identity().Name != "billing-service" {
		b.Fatalf("identity: %+v", cs.Identity())
	}
	s = &session{srv: srv, cs: cs, log: r.log, names: newNames(), q: newQueue(), cat: newSessionCatalog(srv, "orders", searchPath)}
	b.Cleanup(func() { cs.End("benchmark done") })
	return &benchSession{session: s, rec: rec}
}

// feed is a client that sends the bytes it holds and then disconnects
// (io.EOF); refilled, it sends again.
type feed struct{ buf []byte }

func (f *feed) Read(p []byte) (int, error) {
	if len(f.buf) == 0 {
		return 0, io.EOF
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
}

// attachFeed connects the session's request side to a feed, and its
// upstream to nowhere: what requests forwards is encoded and discarded.
func attachFeed(s *benchSession) *feed {
	in := &feed{}
	s.be = pgproto3.NewBackend(in, io.Discard)
	s.fe = pgproto3.NewFrontend(&feed{}, io.Discard)
	return in
}

func encodeMessages(b *testing.B, msgs ...pgproto3.FrontendMessage) []byte {
	b.Helper()
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			b.Fatal(err)
		}
	}
	return buf
}

// runSession runs s as Server.handle does once startup is done (session.run),
// between a client and a canned upstream over in-memory pipes, and returns
// the client. The session, and the upstream with it, end when the client
// disconnects at cleanup.
func runSession(b testing.TB, s *benchSession) *pgproto3.Frontend {
	b.Helper()
	return runSessionSeeing(b, s, nil)
}

// runSessionSeeing is runSession with seen called on each message the
// upstream receives.
func runSessionSeeing(b testing.TB, s *benchSession, seen func(pgproto3.FrontendMessage)) *pgproto3.Frontend {
	b.Helper()
	clientConn, gwConn := net.Pipe()
	upConn, dbConn := net.Pipe()
	s.client, s.be = gwConn, pgproto3.NewBackend(gwConn, gwConn)
	s.fe = pgproto3.NewFrontend(upConn, upConn)
	s.up = &pgconn.HijackedConn{Conn: upConn, Frontend: s.fe, TxStatus: 'I'}
	s.txStatus.Store('I')
	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		cannedUpstream(dbConn, seen)
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.run(context.Background())
	}()
	b.Cleanup(func() {
		clientConn.Close()
		<-done
		<-upDone
	})
	return pgproto3.NewFrontend(clientConn, clientConn)
}

// cannedUpstream answers like PostgreSQL would for the statement measured,
// with fixed responses: the benchmark measures the gateway, so the database
// must take no time. It answers when PostgreSQL does (at Sync, Flush or
// after a Query) and stops when the session closes its connection.
func cannedUpstream(conn net.Conn, seen func(pgproto3.FrontendMessage)) {
	defer conn.Close()
	be := pgproto3.NewBackend(conn, conn)
	field := func(name string, attnum uint16) pgproto3.FieldDescription {
		return pgproto3.FieldDescription{Name: []byte(name), TableOID: customersOID, TableAttributeNumber: attnum,
			DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}
	}
	rows := &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{field("email", 3), field("card_number", 4)}}
	row := &pgproto3.DataRow{Values: [][]byte{[]byte("jane.doe@example.com"), []byte("4111 1111 1111 1111")}}
	done := &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}
	ready := &pgproto3.ReadyForQuery{TxStatus: 'I'}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		if seen != nil {
			seen(msg)
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			be.Send(rows)
			be.Send(row)
			be.Send(done)
			be.Send(ready)
		case *pgproto3.Parse:
			be.Send(&pgproto3.ParseComplete{})
		case *pgproto3.Bind:
			be.Send(&pgproto3.BindComplete{})
		case *pgproto3.Describe:
			if m.ObjectType == 'S' {
				be.Send(&pgproto3.ParameterDescription{ParameterOIDs: []uint32{23}})
			}
			be.Send(rows)
		case *pgproto3.Execute:
			be.Send(row)
			be.Send(done)
		case *pgproto3.Sync:
			be.Send(ready)
		case *pgproto3.Flush:
		default:
			return
		}
		switch msg.(type) {
		case *pgproto3.Query, *pgproto3.Sync, *pgproto3.Flush:
			if err := be.Flush(); err != nil {
				return
			}
		}
	}
}

// exchange sends msgs in one write and reads the responses up to
// ReadyForQuery. When row is not nil it receives a copy of the last row's
// values (the received bytes are valid only until the next receive). An
// error fails the benchmark: a refused statement takes another path than
// the one measured.
func exchange(b testing.TB, fe *pgproto3.Frontend, row *[]string, msgs ...pgproto3.FrontendMessage) {
	b.Helper()
	for _, m := range msgs {
		fe.Send(m)
	}
	if err := fe.Flush(); err != nil {
		b.Fatal(err)
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			b.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			b.Fatalf("the gateway refused the statement: %s: %s", m.Code, m.Message)
		case *pgproto3.DataRow:
			if row != nil {
				*row = (*row)[:0]
				for _, v := range m.Values {
					*row = append(*row, string(v))
				}
			}
		case *pgproto3.ReadyForQuery:
			return
		}
	}
}

// mustAllowMasked fails unless d allows the statement with both masks: the
// path measured is the masked one.
func mustAllowMasked(b *testing.B, d celpolicy.Decision) {
	b.Helper()
	if d.Effect != bundle.EffectAllow || len(d.Masks) != 2 {
		b.Fatalf("decision: %s %v masks %v", d.Effect, d.Reasons, d.Masks)
	}
}

// mustBeMasked fails unless the client got the row masked.
func mustBeMasked(b testing.TB, row []string) {
	b.Helper()
	if want := []string{"j***@example.com", "[REDACTED]"}; !slices.Equal(row, want) {
		b.Fatalf("the client got %q, want %q", row, want)
	}
}

// watchRecords zeroes the server's recorder counters and returns a
// function that reports them per operation: how many events each
// operation made durable, and how long the session waited for that.
func watchRecords(rec *recorder.Recorder) func(*testing.B) {
	rec.Stats.Records.Store(0)
	rec.Stats.Nanos.Store(0)
	return func(b *testing.B) {
		b.ReportMetric(float64(rec.Stats.Records.Load())/float64(b.N), "records/op")
		b.ReportMetric(float64(rec.Stats.Nanos.Load())/float64(b.N), "record-ns/op")
	}
}
