package postgres

import (
	"fmt"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// withNamedRuns returns the request with the statements its SQL EXECUTE
// and FETCH run by name added (Via "EXECUTE" or "FETCH"), as the session
// knows them now, so that rules judge what runs under the bundle in force:
// a statement prepared through the protocol (whose Parse refused only what
// no rule could allow), or by SQL PREPARE under an earlier bundle. The
// request is copied when anything is added. why is set when the request
// must be refused: an EXECUTE of a name the gateway does not know.
func (s *session) withNamedRuns(req *celpolicy.PostgresRequest) (_ *celpolicy.PostgresRequest, why string) {
	if s.cat == nil || req == nil {
		return req, ""
	}
	var added []celpolicy.Statement
	pending := map[string]string{} // PREPAREs earlier in the same request
	for _, st := range req.Statements {
		if st.Via != "" {
			continue
		}
		switch st.Command {
		case "PREPARE":
			if lins, err := s.cat.lineageOf(st.Text); err == nil {
				for _, l := range lins {
					if l.Defines != nil {
						pending[l.Defines.Name] = l.Defines.Query
					}
				}
			}
			continue
		case "EXECUTE", "FETCH":
		default:
			continue
		}
		kind, name, ok := sqlfacts.NamedRun(st.Text)
		if !ok {
			continue
		}
		text, known := s.namedText(kind, name, pending)
		if !known {
			if kind == "prepared statement" {
				return req, fmt.Sprintf("EXECUTE %s: the gateway knows no prepared statement of that name (prepare it again through the gateway)", name)
			}
			continue // a cursor a function opened: its call was decided
		}
		for _, inner := range sqlfacts.Query(text).Statements {
			inner.Via = st.Command
			added = append(added, inner)
		}
	}
	if len(added) == 0 {
		return req, ""
	}
	out := *req
	out.Statements = append(append([]celpolicy.Statement(nil), req.Statements...), added...)
	return &out, ""
}

// namedText is the SQL a name runs: a PREPARE earlier in the same request,
// SQL PREPARE or DECLARE answered earlier, or a protocol Parse or Bind.
func (s *session) namedText(kind, name string, pending map[string]string) (string, bool) {
	if kind == "prepared statement" {
		if q, ok := pending[name]; ok {
			return q, true
		}
	}
	if q, ok := s.cat.Named(kind, name); ok {
		return q, true
	}
	key := "S:" + name
	if kind == "cursor" {
		key = "P:" + name
	}
	stmt, port, _ := s.names.resolve(key, s.batch)
	if port != nil {
		stmt = port.stmt
	}
	if stmt == nil {
		return "", false
	}
	return stmt.sql, true
}

// refuseWith turns a decision into a denial for why, unless it already is.
func refuseWith(d celpolicy.Decision, why string) celpolicy.Decision {
	if why == "" || d.Effect == bundle.EffectDeny {
		return d
	}
	d.Effect = bundle.EffectDeny
	d.Reasons = append([]string{why}, d.Reasons...)
	return d
}
