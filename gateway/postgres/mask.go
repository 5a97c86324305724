package postgres

import (
	"fmt"

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
	// blocked, when set, replaces the result with an error: the rows
	// cannot be masked safely.
	blocked string
	keys    map[string][]byte
}

type colMask struct {
	method string // "" when the column is not masked by name
	mask   string
	target string
	binary bool
	text   bool
}

// describe resolves a RowDescription's columns to their origins and matches
// them with the decision's masks. The origin is the table column a result
// column comes from, whatever its alias: SELECT email AS e is still
// customers.email.
//
// uncertain says the statement combines results (UNION, INTERSECT,
// EXCEPT): PostgreSQL then reports the leftmost branch as every column's
// origin, so no origin can be trusted.
func (s *session) describe(rd *pgproto3.RowDescription, masks []celpolicy.MaskAction, uncertain bool) *resultDesc {
	d := &resultDesc{cols: make([]colMask, len(rd.Fields))}
	if len(masks) == 0 {
		return d
	}
	byTarget := map[string]celpolicy.MaskAction{}
	for _, m := range masks {
		if m.Target.Detector != "" {
			d.detectors = append(d.detectors, m)
		} else {
			byTarget[m.Target.Column] = m
		}
	}
	d.keys = s.maskKeys(masks)
	var rels []uint32
	for _, f := range rd.Fields {
		if f.TableOID != 0 {
			rels = append(rels, f.TableOID)
		}
	}
	names := map[uint32]map[uint16]string{}
	if len(byTarget) > 0 && len(rels) > 0 {
		var err error
		names, err = s.srv.catalog.columnNames(s.cs.Resource(), rels)
		if err != nil {
			// Without origins the masks cannot be applied: fail closed.
			d.blocked = fmt.Sprintf("result columns could not be resolved to mask them (%v); the result is withheld", err)
			return d
		}
	}
	res := findPostgres(&s.srv.core.Bundles().Current().Payload.Model, s.cs.Resource())
	for i, f := range rd.Fields {
		c := colMask{binary: f.Format == 1, text: f.Format == 0 || textTypes[f.DataTypeOID]}
		if uncertain || f.TableOID == 0 || names[f.TableOID][f.TableAttributeNumber] == "" {
			if len(byTarget) > 0 && res != nil && res.DenyUnresolvedColumns {
				why := "is computed"
				if uncertain {
					why = "comes from UNION, INTERSECT or EXCEPT"
				}
				d.blocked = fmt.Sprintf("result column %q %s, so masks cannot follow it to its table column, and resource %q denies such columns while masks apply", f.Name, why, s.cs.Resource())
				return d
			}
		} else if m, ok := byTarget[names[f.TableOID][f.TableAttributeNumber]]; ok {
			c.method, c.mask, c.target = m.Method, m.Mask, m.Target.Column
		}
		d.cols[i] = c
	}
	return d
}

// maskKeys resolves the HMAC keys of hash masks. A key that cannot be
// resolved is left out; hash then falls back to redact (fail closed).
func (s *session) maskKeys(masks []celpolicy.MaskAction) map[string][]byte {
	keys := map[string][]byte{}
	active := s.srv.core.Bundles().Current()
	for _, m := range masks {
		if m.Method != bundle.MaskHash {
			continue
		}
		for _, mk := range active.Payload.Model.Masks {
			if mk.Name == m.Mask && mk.HashKey != "" {
				if v, err := s.srv.secrets.Resolve(mk.HashKey); err == nil {
					keys[m.Mask] = []byte(v)
				} else {
					s.log.Error("mask hash key unavailable; redacting instead", "mask", m.Mask, "err", err)
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
