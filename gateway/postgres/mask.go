package postgres

import (
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/masking"
)

// Text-like types whose binary format is their UTF-8 text, so a masked text
// can stand in for them. Other binary-format columns that must be masked
// become NULL.
var textTypes = map[uint32]bool{
	25:   true, // text
	1043: true, // varchar
	1042: true, // bpchar
	19:   true, // name
	114:  true, // json
	705:  true, // unknown
}

// resultDesc is a result's layout with, per column, the mask to apply.
type resultDesc struct {
	cols []colMask
	// detectors apply to every text value.
	detectors []celpolicy.MaskAction
	keys      map[string][]byte
}

type colMask struct {
	method string // "" when the column is not masked
	mask   string
	target string
	binary bool
	text   bool
}

// maskSet is how one request's results are masked.
type maskSet struct {
	// plan is decided with the statement, from its lineage, before it
	// is sent (sqlfacts.Guard).
	plan *celpolicy.MaskPlan
	// columns are the decision's column masks, also matched against each
	// result column's origin as the server reports it.
	columns   []celpolicy.MaskAction
	detectors []celpolicy.MaskAction
}

// maskSetOf is a request's masking, nil when nothing is masked.
func maskSetOf(req *celpolicy.PostgresRequest, d celpolicy.Decision) *maskSet {
	m := &maskSet{detectors: detectorsOf(d.Masks), plan: d.Masking}
	for _, a := range d.Masks {
		if a.Target.Column != "" {
			m.columns = append(m.columns, a)
		}
	}
	if len(m.columns) == 0 && len(m.detectors) == 0 && !m.plan.Masked() {
		return nil
	}
	return m
}

// withholdsErrors: with column masks, server errors may quote a value.
func (m *maskSet) withholdsErrors() bool { return m != nil && (len(m.columns) > 0 || m.plan.Masked()) }

// describe lays a result's columns over the plan of the statement that
// produced it (the index-th of its request), and matches each column's
// origin as the server reports it (the table column it comes from,
// whatever its alias) against the column masks too: a column gets the
// strongest mask either way gives. Nothing here refuses: what could not be
// masked was refused before the statement was sent.
func (s *session) describe(rd *pgproto3.RowDescription, m *maskSet, index int) *resultDesc {
	d := &resultDesc{cols: make([]colMask, len(rd.Fields))}
	if m == nil {
		return d
	}
	d.detectors = m.detectors
	for i, f := range rd.Fields {
		d.cols[i] = colMask{binary: f.Format == 1, text: f.Format == 0 || textTypes[f.DataTypeOID]}
	}
	set := func(i int, method, mask, target string) {
		if method == "" || i >= len(d.cols) {
			return
		}
		if d.cols[i].method == "" || bundle.MaskStrength(method) > bundle.MaskStrength(d.cols[i].method) {
			d.cols[i].method, d.cols[i].mask, d.cols[i].target = method, mask, target
		}
	}
	if st := planOf(m.plan, index); st != nil {
		for i, o := range layout(st.Outputs, len(rd.Fields)) {
			target := ""
			if len(o.Sources) > 0 {
				target = o.Sources[0].Column
			}
			set(i, o.Method, o.Mask, target)
		}
	}
	d.keys = s.maskKeys(m)
	if len(m.columns) == 0 {
		return d
	}
	var rels []uint32
	for _, f := range rd.Fields {
		if f.TableOID != 0 {
			rels = append(rels, f.TableOID)
		}
	}
	if len(rels) == 0 {
		return d
	}
	names, err := s.srv.catalog.columnNames(s.cs.Resource(), rels)
	if err != nil {
		// Without origins, the plan alone decides; it was made from the
		// statement's lineage and does not depend on this lookup.
		s.log.Warn("result column origins could not be read; masking by the statement's lineage alone", "err", err)
		return d
	}
	for i, f := range rd.Fields {
		origin := names[f.TableOID][f.TableAttributeNumber]
		for _, a := range m.columns {
			if origin != "" && a.Target.Column == origin {
				set(i, a.Method, a.Mask, origin)
			}
		}
	}
	return d
}

// layout maps a statement's planned outputs onto a result's columns. An
// output of unknown width (a * over a relation whose columns were not
// known) takes what the others leave. If the result does not fit the plan
// at all (the database changed between planning and running), every
// column gets the strongest mask the plan has.
func layout(outs []celpolicy.OutputMask, fields int) []celpolicy.OutputMask {
	known, open := 0, 0
	for _, o := range outs {
		if o.Columns == 0 {
			open++
		} else {
			known += o.Columns
		}
	}
	if open == 0 && known == fields {
		return outs
	}
	if open == 1 && fields >= known {
		var cols []celpolicy.OutputMask
		for _, o := range outs {
			if o.Columns != 0 {
				cols = append(cols, o)
				continue
			}
			for j := 0; j < fields-known; j++ {
				cols = append(cols, o)
			}
		}
		return cols
	}
	var strongest celpolicy.OutputMask
	for _, o := range outs {
		if o.Method != "" && (strongest.Method == "" || bundle.MaskStrength(o.Method) > bundle.MaskStrength(strongest.Method)) {
			strongest = o
		}
	}
	cols := make([]celpolicy.OutputMask, fields)
	for i := range cols {
		cols[i] = strongest
	}
	return cols
}

// maskKeys resolves the HMAC keys of hash masks. A key that cannot be
// resolved is left out; hash then falls back to redact (fail closed).
func (s *session) maskKeys(m *maskSet) map[string][]byte {
	keys := map[string][]byte{}
	active := s.srv.core.Bundles().Current()
	for _, a := range append(append([]celpolicy.MaskAction(nil), m.columns...), m.detectors...) {
		if a.Method != bundle.MaskHash || keys[a.Mask] != nil {
			continue
		}
		for _, mk := range active.Payload.Model.Masks {
			if mk.Name == a.Mask && mk.HashKey != "" {
				if v, err := s.srv.secrets.Resolve(mk.HashKey); err == nil {
					keys[a.Mask] = []byte(v)
				} else {
					s.log.Error("mask hash key unavailable; redacting instead", "mask", a.Mask, "err", err)
				}
			}
		}
	}
	return keys
}

// mask rewrites one row.
func (d *resultDesc) mask(row *pgproto3.DataRow) *pgproto3.DataRow {
	out := &pgproto3.DataRow{Values: make([][]byte, len(row.Values))}
	for i, v := range row.Values {
		out.Values[i] = v
		if v == nil || i >= len(d.cols) {
			continue
		}
		c := d.cols[i]
		method, mask := c.method, c.mask
		if c.text {
			for _, det := range d.detectors {
				if masking.Detect(det.Target.Detector, v) && bundle.MaskStrength(det.Method) > bundle.MaskStrength(method) {
					method, mask = det.Method, det.Mask
				}
			}
		}
		if method == "" {
			continue
		}
		if method == bundle.MaskHash && d.keys[mask] == nil {
			method = bundle.MaskRedact
		}
		if c.binary && !c.text {
			// A masked value cannot be written in a binary format it does
			// not have: send NULL.
			out.Values[i] = nil
			continue
		}
		out.Values[i] = masking.Apply(method, v, d.keys[mask])
	}
	return out
}
