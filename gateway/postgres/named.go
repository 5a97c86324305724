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
	runs := false
	for _, st := range req.Statements {
		if st.Command == "EXECUTE" || st.Command == "FETCH" || st.Command == "MOVE" {
			runs = true // perhaps inside EXPLAIN ANALYZE or CREATE TABLE AS
		}
	}
	if !runs {
		return req, ""
	}
	var added []celpolicy.Statement
	pending := map[string]string{} // PREPAREs earlier in the same request
	for _, st := range req.Statements {
		if st.Via != "" {
			continue
		}
		if st.Command == "PREPARE" {
			if lins, err := s.cat.lineageOf(st.Text); err == nil {
				for _, l := range lins {
					if l.Defines != nil {
						pending[l.Defines.Name] = l.Defines.Query
					}
				}
			}
			continue
		}
		more, why := s.namedRuns(st.Text, pending, 0)
		if why != "" {
			return req, why
		}
		added = append(added, more...)
	}
	if len(added) == 0 {
		return req, ""
	}
	out := *req
	out.Statements = append(append([]celpolicy.Statement(nil), req.Statements...), added...)
	out.Shape = "" // decided by the definitions as they are now
	sqlfacts.ResolveCalls(&out, s.cat)
	return &out, ""
}

// maxNamedDepth bounds how deep a statement run by name may itself run
// another by name (a protocol Parse of "EXECUTE p").
const maxNamedDepth = 4

// namedRuns returns the statements text runs by name, with theirs in turn.
func (s *session) namedRuns(text string, pending map[string]string, depth int) (added []celpolicy.Statement, why string) {
	if depth > maxNamedDepth {
		return nil, "statements that run other statements by name are nested too deep"
	}
	refs, ok := sqlfacts.NamedRuns(text)
	if !ok {
		return nil, "a statement could not be read to find what it runs by name"
	}
	for _, ref := range refs {
		inner, known := s.namedText(ref.Kind, ref.Name, pending)
		if !known {
			if ref.Kind == "prepared statement" {
				return nil, fmt.Sprintf("EXECUTE %s: the gateway knows no prepared statement of that name (prepare it again through the gateway)", ref.Name)
			}
			if s.cat.tookName(ref.Kind, ref.Name) {
				// A portal bound through the protocol, then forgotten
				// (DECLARE or CLOSE forget every portal): the upstream may
				// still hold it, and FETCH or MOVE would run a statement
				// no rule has judged under this bundle.
				return nil, fmt.Sprintf("FETCH or MOVE %s: the gateway no longer knows what the portal of that name runs (bind it again through the gateway)", ref.Name)
			}
			continue // a cursor a function opened: its call was decided
		}
		via := "EXECUTE"
		if ref.Kind == "cursor" {
			via = "FETCH"
		}
		for _, st := range sqlfacts.Query(inner).Statements {
			st.Via = via
			added = append(added, st)
		}
		deeper, why := s.namedRuns(inner, nil, depth+1)
		if why != "" {
			return nil, why
		}
		added = append(added, deeper...)
	}
	return added, ""
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
