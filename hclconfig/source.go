package hclconfig

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/apparentlymart/go-textseg/v15/textseg"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"golang.org/x/text/unicode/norm"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// sourceMap remembers where each object and attribute was written, keyed by
// the model Ref that problems carry.
type sourceMap struct {
	objects map[string]hcl.Range
	attrs   map[string]*hcl.Attribute
	files   map[string]*hcl.File
}

func newSourceMap() *sourceMap {
	return &sourceMap{objects: map[string]hcl.Range{}, attrs: map[string]*hcl.Attribute{}, files: map[string]*hcl.File{}}
}

func objectKey(r bundle.Ref) string { return r.Kind + "\x00" + r.Name + "\x00" + r.Rule }
func attrKey(r bundle.Ref) string   { return objectKey(r) + "\x00" + r.Attr }

func (s *sourceMap) object(r bundle.Ref, rng hcl.Range, f *hcl.File) {
	s.objects[objectKey(r)] = rng
	s.files[rng.Filename] = f
}

func (s *sourceMap) attribute(r bundle.Ref, a *hcl.Attribute) { s.attrs[attrKey(r)] = a }

// rangeOf finds the best source range for a problem: the token inside an
// expression string, the list element, the attribute, or the block.
func (s *sourceMap) rangeOf(p bundle.Problem) (hcl.Range, bool) {
	r := p.Ref
	if a, ok := s.attrs[attrKey(r)]; ok {
		if p.Span != nil {
			if rng, ok := s.spanRange(a, *p.Span); ok {
				return rng, true
			}
		}
		if r.Index >= 0 {
			if t, ok := a.Expr.(*hclsyntax.TupleConsExpr); ok && r.Index < len(t.Exprs) {
				return t.Exprs[r.Index].Range(), true
			}
		}
		return a.Expr.Range(), true
	}
	// A missing attribute: point at the block that should have it.
	if rng, ok := s.objects[objectKey(r)]; ok {
		return rng, true
	}
	if r.Rule != "" {
		r.Rule = ""
		if rng, ok := s.objects[objectKey(r)]; ok {
			return rng, true
		}
	}
	return hcl.Range{}, false
}

// spanRange maps a byte span inside an attribute's string value to a range
// in the file. The value is what the expression evaluates to; the file holds
// its source spelling, which differs by quotes, escapes and heredoc
// indentation, so each value byte is mapped to its source byte.
func (s *sourceMap) spanRange(a *hcl.Attribute, sp bundle.Span) (hcl.Range, bool) {
	f := s.files[a.Expr.Range().Filename]
	if f == nil {
		return hcl.Range{}, false
	}
	rng := a.Expr.Range()
	if rng.End.Byte > len(f.Bytes) || rng.Start.Byte < 0 || rng.Start.Byte > rng.End.Byte {
		return hcl.Range{}, false
	}
	raw := f.Bytes[rng.Start.Byte:rng.End.Byte]
	v, diags := a.Expr.Value(nil)
	if diags.HasErrors() || v.IsNull() || !v.Type().Equals(cty.String) {
		return hcl.Range{}, false
	}
	offsets, ok := valueOffsets(raw, v.AsString())
	if !ok {
		return hcl.Range{}, false
	}
	start := sp.Offset
	end := sp.Offset + sp.Length
	if start < 0 || start > len(offsets)-1 || end > len(offsets)-1 || end < start {
		return hcl.Range{}, false
	}
	rawStart := offsets[start]
	rawEnd := offsets[end]
	if end > start && bytesContainNewline(f.Bytes[rng.Start.Byte+offsets[end-1]:rng.Start.Byte+rawEnd]) {
		// The next value byte is on another line (a heredoc's
		// indentation lies between): end right after the last byte.
		rawEnd = offsets[end-1] + 1
	}
	return hcl.Range{
		Filename: rng.Filename,
		Start:    advance(f.Bytes, rng.Start, rawStart),
		End:      advance(f.Bytes, rng.Start, rawEnd),
	}, true
}

// advance moves a position forward by n bytes of src, counting lines and
// columns the way HCL does: a column is a grapheme cluster (a letter and its
// combining accents, a flag emoji), and \r or \n starts a line.
func advance(src []byte, from hcl.Pos, n int) hcl.Pos {
	pos := from
	end := min(from.Byte+n, len(src))
	for pos.Byte < end {
		adv, ch, _ := textseg.ScanGraphemeClusters(src[pos.Byte:end], true)
		if adv == 0 {
			break
		}
		pos.Byte += adv
		switch ch[0] {
		case '\r', '\n':
			pos.Line++
			pos.Column = 1
		default:
			pos.Column++
		}
	}
	return pos
}

// normalized returns the NFC form of decoded (which is what HCL stores for
// every string) and, for each of its bytes plus one past the end, the
// source offset taken from offs. Normalisation works on segments (a base
// character and its combining marks); every byte of a segment maps to the
// source of the segment's first byte, which is exact wherever a token starts.
func normalized(decoded string, offs []int) (string, []int) {
	if norm.NFC.IsNormalString(decoded) {
		return decoded, offs
	}
	var it norm.Iter
	it.InitString(norm.NFC, decoded)
	var out []byte
	var mapped []int
	for !it.Done() {
		start := it.Pos()
		seg := it.Next()
		for range seg {
			mapped = append(mapped, offs[start])
		}
		out = append(out, seg...)
	}
	mapped = append(mapped, offs[len(decoded)])
	return string(out), mapped
}

func bytesContainNewline(b []byte) bool {
	for _, c := range b {
		if c == '\n' {
			return true
		}
	}
	return false
}

// valueOffsets returns, for each byte of value (plus one past the end), the
// offset in raw of the source byte that produced it. It understands quoted
// strings with HCL's escapes and heredocs (<<EOT and the indented <<-EOT).
// It reports false when the source is something else, or when its own
// decoding does not reproduce the value: then callers fall back to the
// attribute's range rather than point at the wrong place.
func valueOffsets(raw []byte, value string) ([]int, bool) {
	switch {
	case len(raw) >= 2 && raw[0] == '"':
		return quotedOffsets(raw, value)
	case len(raw) >= 2 && raw[0] == '<' && raw[1] == '<':
		return heredocOffsets(raw, value)
	}
	return nil, false
}

func quotedOffsets(raw []byte, value string) ([]int, bool) {
	offsets := make([]int, 0, len(value)+1)
	var out []byte
	i := 1
	for i < len(raw) {
		c := raw[i]
		switch {
		case c == '"':
			offsets = append(offsets, i)
			got, mapped := normalized(string(out), offsets)
			return mapped, got == value
		case c == '\\' && i+1 < len(raw):
			var dec string
			n := 2
			switch raw[i+1] {
			case 'n':
				dec = "\n"
			case 'r':
				dec = "\r"
			case 't':
				dec = "\t"
			case '"':
				dec = "\""
			case '\\':
				dec = "\\"
			case 'u', 'U':
				digits := 4
				if raw[i+1] == 'U' {
					digits = 8
				}
				if i+2+digits > len(raw) {
					return nil, false
				}
				cp, err := strconv.ParseUint(string(raw[i+2:i+2+digits]), 16, 32)
				if err != nil {
					return nil, false
				}
				dec = string(rune(cp))
				n = 2 + digits
			default:
				return nil, false
			}
			for range len(dec) {
				offsets = append(offsets, i)
			}
			out = append(out, dec...)
			i += n
		case (c == '$' || c == '%') && i+2 < len(raw) && raw[i+1] == c && raw[i+2] == '{':
			// $${ and %%{ are escapes for a literal ${ and %{.
			offsets = append(offsets, i+1, i+2)
			out = append(out, c, '{')
			i += 3
		default:
			offsets = append(offsets, i)
			out = append(out, c)
			i++
		}
	}
	return nil, false
}

func heredocOffsets(raw []byte, value string) ([]int, bool) {
	nl := strings.IndexByte(string(raw), '\n')
	if nl < 0 {
		return nil, false
	}
	bodyStart := nl + 1
	rawLines := strings.SplitAfter(string(raw[bodyStart:]), "\n")
	valLines := strings.SplitAfter(value, "\n")
	if len(valLines) > 0 && valLines[len(valLines)-1] == "" {
		valLines = valLines[:len(valLines)-1]
	}
	if len(valLines) > len(rawLines) {
		return nil, false
	}
	offsets := make([]int, 0, len(value)+1)
	pos := bodyStart
	for i, vl := range valLines {
		rl := rawLines[i]
		// Each value line is its source line, minus the indentation that
		// <<- strips, normalised to NFC as HCL does.
		ws := len(rl) - len(strings.TrimLeft(rl, " \t"))
		found := false
		for indent := 0; indent <= ws && !found; indent++ {
			seg := rl[indent:]
			offs := make([]int, len(seg)+1)
			for j := range offs {
				offs[j] = pos + indent + j
			}
			got, mapped := normalized(seg, offs)
			if got == vl || strings.TrimSuffix(got, "\r\n")+"\n" == vl {
				offsets = append(offsets, mapped[:len(vl)]...)
				found = true
			}
		}
		if !found {
			return nil, false
		}
		pos += len(rl)
	}
	offsets = append(offsets, pos)
	return offsets, true
}

// problems converts model problems into diagnostics at their source.
func (d *decoder) problems(ps bundle.Problems) {
	for _, p := range ps {
		diag := &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  summaries[p.Code],
			Detail:   p.Message,
			Extra:    p,
		}
		if diag.Summary == "" {
			diag.Summary = "Invalid policy"
		}
		if p.Code == bundle.CodeMixedKinds && p.Ref.Kind == "mask" {
			diag.Summary = "Mask covers several resource kinds"
		}
		if p.Code == bundle.CodeCELSyntax || p.Code == bundle.CodeCELType || p.Code == bundle.CodeCELCost {
			diag.Detail = fmt.Sprintf("%s (%s)", p.Message, celContext(p.Ref))
		}
		if rng, ok := d.src.rangeOf(p); ok {
			diag.Subject = &rng
			if a, ok := d.src.attrs[attrKey(p.Ref)]; ok && p.Span != nil {
				ctx := a.Range
				diag.Context = &ctx
			}
		}
		d.diags = append(d.diags, diag)
	}
}

func celContext(r bundle.Ref) string {
	if r.Rule != "" {
		return fmt.Sprintf("in %s of rule %q of %s %q", r.Attr, r.Rule, r.Kind, r.Name)
	}
	return fmt.Sprintf("in %s of %s %q", r.Attr, r.Kind, r.Name)
}

// ProblemOf returns the model problem behind a diagnostic, if there is one,
// so that callers can read its stable code.
func ProblemOf(d *hcl.Diagnostic) (bundle.Problem, bool) {
	p, ok := d.Extra.(bundle.Problem)
	return p, ok
}

var summaries = map[string]string{
	bundle.CodeInvalidName:      "Invalid name",
	bundle.CodeDuplicateName:    "Duplicate name",
	bundle.CodeMissingAttribute: "Missing required attribute",
	bundle.CodeUnknownReference: "Reference to undefined object",
	bundle.CodeInlineSecret:     "Secret written inline",
	bundle.CodeInvalidSecretRef: "Invalid secret reference",
	bundle.CodeInvalidValue:     "Invalid value",
	bundle.CodeConflict:         "Conflicting attributes",
	bundle.CodeMixedKinds:       "Policy covers several resource kinds",
	bundle.CodeCELSyntax:        "CEL syntax error",
	bundle.CodeCELType:          "CEL type error",
	bundle.CodeCELCost:          "CEL expression too expensive",
}
