package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// hold holds a statement under review through the core (see
// core.Session.Hold). The PostgreSQL parts: the hash binds the parse tree
// and the parameters' types and bytes; approvers read the SQL as sent and
// as PostgreSQL parses it, with the parameters decoded; the caller hears of
// the hold in a NOTICE; and a client that disconnects is noticed by
// reading ahead on its connection.
func (s *session) hold(ctx context.Context, kind, sql string, params *boundParams, req *celpolicy.PostgresRequest, d celpolicy.Decision) core.Verdict {
	// Approvers and the recording read the text with its secrets
	// redacted; the hash binds the statement as sent.
	parsed, _ := sqlfacts.Deparse(sql)
	rec := requested(kind, sql, req, d)
	return s.cs.Hold(ctx, core.Held{
		Kind: kind, Text: rec.Text, Request: req, Recorded: rec.Request, Decision: d,
		Subject: approval.Subject{Text: rec.Text, Canonical: sqlfacts.RedactSecrets(parsed), Params: params.display(s.srv.types)},
		Bind:    func() (string, error) { return requestHash(sql, params) },
		Notify: func(r approval.Request, wait time.Duration) error {
			msg, detail, hint := core.HoldNotice(&r, "statement", wait)
			return s.send(&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "01000",
				Message: msg, Detail: detail, Hint: hint}, true)
		},
		Watch: s.reader.watch,
	})
}
