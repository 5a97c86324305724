package session

import (
	"encoding/json"
	"strconv"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

// Every request event carries its request's facts and its decision as
// JSON. encoding/json finds their fields by reflection on every call,
// which cost about 4 % of the gateway's CPU at 8 pgbench clients (two
// calls per statement). These appenders write the PostgreSQL request and
// the decision directly, byte for byte what json.Marshal writes
// (TestRequestJSONMatchesMarshal and FuzzRequestJSON compare them): same
// field order, `null` for a nil list, omitempty where the types say so,
// and the same escaping. Anything else (another protocol's request, a
// decision that needs approvals) goes through json.Marshal.

// marshalRequest is json.Marshal(req).
func marshalRequest(req celpolicy.Request) []byte {
	if pr, ok := req.(*celpolicy.PostgresRequest); ok && pr != nil {
		return appendPostgresRequest(make([]byte, 0, requestSize(pr)), pr)
	}
	b, _ := json.Marshal(req)
	return b
}

// marshalDecision is json.Marshal(d).
func marshalDecision(d *celpolicy.Decision) []byte {
	if len(d.Approvals) > 0 {
		b, _ := json.Marshal(d)
		return b
	}
	b := make([]byte, 0, decisionSize(d))
	b = append(b, `{"effect":`...)
	b = recorder.AppendString(b, string(d.Effect))
	b = append(b, `,"matched_rules":`...)
	b = appendList(b, d.MatchedRules, func(b []byte, m celpolicy.MatchedRule) []byte {
		b = append(b, `{"rule":`...)
		b = recorder.AppendString(b, m.Rule)
		b = append(b, `,"effect":`...)
		b = recorder.AppendString(b, string(m.Effect))
		b = append(b, `,"reason":`...)
		b = recorder.AppendString(b, m.Reason)
		return append(b, '}')
	})
	b = append(b, `,"reasons":`...)
	b = appendList(b, d.Reasons, recorder.AppendString)
	b = append(b, `,"masks":`...)
	b = appendList(b, d.Masks, func(b []byte, m celpolicy.MaskAction) []byte {
		b = append(b, `{"target":`...)
		b = recorder.AppendString(b, m.Target.String())
		b = append(b, `,"method":`...)
		b = recorder.AppendString(b, m.Method)
		b = append(b, `,"mask":`...)
		b = recorder.AppendString(b, m.Mask)
		if m.AllowInPredicates {
			b = append(b, `,"allow_in_predicates":true`...)
		}
		return append(b, '}')
	})
	b = append(b, `,"bundle_revision":`...)
	b = strconv.AppendUint(b, d.BundleRevision, 10)
	if d.Admin {
		b = append(b, `,"admin":true`...)
	}
	return append(b, '}')
}

func appendPostgresRequest(b []byte, r *celpolicy.PostgresRequest) []byte {
	b = append(b, `{"kind":`...)
	b = recorder.AppendString(b, r.Kind)
	b = append(b, `,"statements":`...)
	b = appendList(b, r.Statements, appendStatement)
	b = appendOmitEmpty(b, "invalid", r.Problem)
	if r.Masking != nil {
		b = append(b, `,"masking":`...)
		b = appendMaskPlan(b, r.Masking)
	}
	return append(b, '}')
}

func appendStatement(b []byte, s celpolicy.Statement) []byte {
	b = append(b, `{"command":`...)
	b = recorder.AppendString(b, s.Command)
	b = append(b, `,"tables":`...)
	b = appendList(b, s.Tables, func(b []byte, t celpolicy.Table) []byte {
		b = append(b, `{"schema":`...)
		b = recorder.AppendString(b, t.Schema)
		b = append(b, `,"name":`...)
		b = recorder.AppendString(b, t.Name)
		b = append(b, `,"access":`...)
		b = recorder.AppendString(b, t.Access)
		b = appendOmitEmpty(b, "via", t.Via)
		return append(b, '}')
	})
	b = append(b, `,"functions":`...)
	b = appendList(b, s.Functions, recorder.AppendString)
	b = append(b, `,"has_where":`...)
	b = strconv.AppendBool(b, s.HasWhere)
	b = appendOmitEmpty(b, "setting", s.Setting)
	b = appendOmitEmpty(b, "copy_direction", s.CopyDirection)
	b = appendOmitEmpty(b, "copy_target", s.CopyTarget)
	b = appendOmitEmpty(b, "locking", s.Locking)
	if s.SetOperation {
		b = append(b, `,"set_operation":true`...)
	}
	b = appendOmitEmpty(b, "language", s.Language)
	b = appendOmitEmpty(b, "via", s.Via)
	b = append(b, `,"fingerprint":`...)
	b = recorder.AppendString(b, s.Fingerprint)
	b = append(b, `,"calls":`...)
	b = appendList(b, s.Calls, func(b []byte, c celpolicy.Call) []byte {
		b = append(b, `{"name":`...)
		b = recorder.AppendString(b, c.Name)
		b = append(b, `,"schema":`...)
		b = recorder.AppendString(b, c.Schema)
		b = append(b, `,"volatility":`...)
		b = recorder.AppendString(b, c.Volatility)
		b = append(b, `,"builtin":`...)
		b = strconv.AppendBool(b, c.Builtin)
		return append(b, '}')
	})
	b = append(b, `,"volatile_functions":`...)
	b = appendList(b, s.VolatileFunctions, recorder.AppendString)
	b = append(b, `,"column_uses":`...)
	b = appendList(b, s.ColumnUses, func(b []byte, u celpolicy.ColumnUse) []byte {
		b = append(b, `{"column":`...)
		b = recorder.AppendString(b, u.Column)
		b = append(b, `,"clause":`...)
		b = recorder.AppendString(b, u.Clause)
		return append(b, '}')
	})
	b = append(b, `,"text":`...)
	b = recorder.AppendString(b, s.Text)
	return append(b, '}')
}

func appendMaskPlan(b []byte, p *celpolicy.MaskPlan) []byte {
	b = append(b, `{"statements":`...)
	b = appendList(b, p.Statements, func(b []byte, st celpolicy.StatementMasks) []byte {
		b = append(b, `{"text":`...)
		b = recorder.AppendString(b, st.Text)
		b = append(b, `,"outputs":`...)
		b = appendList(b, st.Outputs, appendOutputMask)
		return append(b, '}')
	})
	if len(p.Notes) > 0 {
		b = append(b, `,"notes":`...)
		b = appendList(b, p.Notes, recorder.AppendString)
	}
	return append(b, '}')
}

func appendOutputMask(b []byte, o celpolicy.OutputMask) []byte {
	b = append(b, `{"name":`...)
	b = recorder.AppendString(b, o.Name)
	b = append(b, `,"columns":`...)
	b = strconv.AppendInt(b, int64(o.Columns), 10)
	b = appendOmitEmpty(b, "method", o.Method)
	b = appendOmitEmpty(b, "mask", o.Mask)
	if len(o.Sources) > 0 {
		b = append(b, `,"sources":`...)
		b = appendList(b, o.Sources, func(b []byte, s celpolicy.MaskedSource) []byte {
			b = append(b, `{"column":`...)
			b = recorder.AppendString(b, s.Column)
			b = append(b, `,"mask":`...)
			b = recorder.AppendString(b, s.Mask)
			b = append(b, `,"method":`...)
			b = recorder.AppendString(b, s.Method)
			if s.Derived {
				b = append(b, `,"derived":true`...)
			}
			return append(b, '}')
		})
	}
	return append(b, '}')
}

// requestSize and decisionSize estimate the JSON's length from above for
// common requests, so that its buffer is allocated once.
func requestSize(r *celpolicy.PostgresRequest) int {
	n := 64 + len(r.Problem)
	for _, st := range r.Statements {
		n += 256 + len(st.Text) + 64*(len(st.Tables)+len(st.Calls)+len(st.ColumnUses)+len(st.Functions))
	}
	if r.Masking != nil {
		for _, st := range r.Masking.Statements {
			n += 48 + len(st.Text) + 96*len(st.Outputs)
		}
	}
	return n
}

func decisionSize(d *celpolicy.Decision) int {
	n := 96
	for _, m := range d.MatchedRules {
		n += 48 + len(m.Rule) + len(m.Reason)
	}
	for _, r := range d.Reasons {
		n += 4 + len(r)
	}
	return n + 112*len(d.Masks)
}

// appendList writes a list as json.Marshal does: null when nil.
func appendList[T any](b []byte, list []T, each func([]byte, T) []byte) []byte {
	if list == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, v := range list {
		if i > 0 {
			b = append(b, ',')
		}
		b = each(b, v)
	}
	return append(b, ']')
}

// appendOmitEmpty writes ,"name":"value" unless value is empty.
func appendOmitEmpty(b []byte, name, value string) []byte {
	if value == "" {
		return b
	}
	b = append(append(append(b, ",\""...), name...), "\":"...)
	return recorder.AppendString(b, value)
}
