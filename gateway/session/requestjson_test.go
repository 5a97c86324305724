package session

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// odd is a string with everything encoding/json escapes.
const odd = "a<b>&\"\\\n\t\x01\u2028\u2029é\xff"

// jsonCase builds a request and a decision from SQL and a string that
// goes into every free-text field; flags choose nil or empty lists and the
// optional fields.
func jsonCase(t testing.TB, sql, s string, flags uint8) (*celpolicy.PostgresRequest, celpolicy.Decision) {
	req := &celpolicy.PostgresRequest{Kind: "query"}
	if stmts, err := sqlfacts.Analyze(sql); err == nil {
		req.Statements = stmts
	} else {
		req.Problem = err.Error() + s
	}
	if flags&1 != 0 && len(req.Statements) > 0 {
		st := &req.Statements[0]
		st.Setting, st.CopyDirection, st.CopyTarget, st.Locking, st.Language, st.Via = s, "to", s, "FOR UPDATE", s, s
		st.SetOperation = true
		st.Tables = append(st.Tables, celpolicy.Table{Schema: s, Name: s, Access: "read", Via: s})
		st.Calls = append(st.Calls, celpolicy.Call{Name: s, Schema: "", Volatility: "volatile", Builtin: true})
		st.ColumnUses = append(st.ColumnUses, celpolicy.ColumnUse{Column: s, Clause: "where"})
		st.Functions = []string{}
	}
	if flags&2 != 0 {
		req.Masking = &celpolicy.MaskPlan{}
		if flags&4 != 0 {
			req.Masking.Statements = []celpolicy.StatementMasks{
				{Text: s, Outputs: []celpolicy.OutputMask{{Name: s, Columns: 1}, {Name: "x", Columns: -3, Method: s, Mask: s,
					Sources: []celpolicy.MaskedSource{{Column: s, Mask: s, Method: "redact", Derived: true}, {}}}}},
				{Text: sql},
			}
			req.Masking.Notes = []string{s, ""}
		}
	}
	d := celpolicy.Decision{Effect: bundle.Effect(s), BundleRevision: uint64(flags) << 40}
	if flags&8 != 0 {
		d.MatchedRules = []celpolicy.MatchedRule{{Rule: s, Effect: bundle.EffectAllow, Reason: s}, {}}
		d.Reasons = []string{s}
		d.Masks = []celpolicy.MaskAction{
			{Target: celpolicy.MaskTarget{Column: s}, Method: s, Mask: s, AllowInPredicates: true},
			{Target: celpolicy.MaskTarget{Detector: s}}, {Target: celpolicy.MaskTarget{Field: "secrets/data"}},
		}
	}
	if flags&16 != 0 {
		d.Reasons, d.Masks = []string{}, []celpolicy.MaskAction{}
		d.Admin = true
	}
	if flags&32 != 0 {
		d.Approvals = []celpolicy.ApprovalNeed{{Rule: s, Groups: []string{s}, Count: 2}}
	}
	return req, d
}

func checkJSON(t testing.TB, req *celpolicy.PostgresRequest, d celpolicy.Decision) {
	t.Helper()
	want, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if got := marshalRequest(req); !bytes.Equal(got, want) {
		t.Fatalf("request:\n got %s\nwant %s", got, want)
	}
	want, err = json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	if got := marshalDecision(&d); !bytes.Equal(got, want) {
		t.Fatalf("decision:\n got %s\nwant %s", got, want)
	}
}

// TestRequestJSONMatchesMarshal: the appenders write what json.Marshal
// writes, for facts of real statements and every optional field.
func TestRequestJSONMatchesMarshal(t *testing.T) {
	for _, sql := range []string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 48213",
		"SELECT * FROM a JOIN b USING (id) WHERE a.x > 1 ORDER BY b.y FOR UPDATE",
		"WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d; SET search_path TO x",
		"COPY (SELECT email FROM customers) TO STDOUT",
		"SELECT 'x' UNION SELECT lower(email) FROM customers",
		"DO $$BEGIN PERFORM 1; END$$",
		"not sql at all",
		"",
	} {
		for flags := range uint8(64) {
			req, d := jsonCase(t, sql, odd, flags)
			checkJSON(t, req, d)
		}
	}
	// Another protocol's request goes through json.Marshal.
	ssh := &celpolicy.SSHRequest{Kind: "exec"}
	want, _ := json.Marshal(ssh)
	if got := marshalRequest(ssh); !bytes.Equal(got, want) {
		t.Fatalf("ssh request: got %s, want %s", got, want)
	}
}

// TestRequestJSONKnowsEveryField fills every field of a request and a
// decision, so that a field added to the types and not to the appenders
// fails here rather than go missing from recordings.
func TestRequestJSONKnowsEveryField(t *testing.T) {
	var req celpolicy.PostgresRequest
	fill(reflect.ValueOf(&req).Elem(), odd)
	var d celpolicy.Decision
	fill(reflect.ValueOf(&d).Elem(), odd)
	d.Approvals = nil // a decision that needs approvals goes through json.Marshal
	d.Masks[0].Target = celpolicy.MaskTarget{Column: odd}
	checkJSON(t, &req, d)
}

// fill sets every exported field json writes to a value that is not its
// zero: strings to s, numbers, true, and lists of one filled element.
func fill(v reflect.Value, s string) {
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64:
		v.SetInt(7)
	case reflect.Uint64:
		v.SetUint(9)
	case reflect.Slice:
		l := reflect.MakeSlice(v.Type(), 1, 1)
		fill(l.Index(0), s)
		v.Set(l)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fill(p.Elem(), s)
		v.Set(p)
	case reflect.Struct:
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if f.IsExported() && f.Tag.Get("json") != "-" {
				fill(v.Field(i), s)
			}
		}
	}
}

func FuzzRequestJSON(f *testing.F) {
	f.Add("SELECT abalance FROM pgbench_accounts WHERE aid = 1", odd, uint8(15))
	f.Add("UPDATE t SET a = b FROM u WHERE t.id = u.id", "", uint8(0))
	f.Add("SELECT 1; SELECT 2", "\u2028<", uint8(63))
	f.Fuzz(func(t *testing.T, sql, s string, flags uint8) {
		req, d := jsonCase(t, sql, s, flags)
		checkJSON(t, req, d)
	})
}

// BenchmarkRequestJSON: the appenders against json.Marshal, for a pgbench
// statement's request and decision.
func BenchmarkRequestJSON(b *testing.B) {
	req, d := jsonCase(b, "SELECT abalance FROM pgbench_accounts WHERE aid = 48213", "", 8)
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = marshalRequest(req)
			_ = marshalDecision(&d)
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = json.Marshal(req)
			_, _ = json.Marshal(&d)
		}
	})
}
