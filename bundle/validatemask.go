package bundle

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Masks: the PostgreSQL column names they target, and their checks (the
// Kubernetes field form is in maskfield.go).

// ParseColumn splits a mask column into schema, table and column names as
// PostgreSQL stores them. As in SQL, an unquoted name is folded to lower
// case and a "double-quoted" one is kept as written; a two-part name is in
// the public schema.
func ParseColumn(s string) (schema, table, column string, err error) {
	parts, err := splitIdents(s)
	if err != nil {
		return "", "", "", fmt.Errorf("column %q: %v", s, err)
	}
	switch len(parts) {
	case 2:
		parts = append([]string{"public"}, parts...)
	case 3:
	default:
		return "", "", "", fmt.Errorf("column %q must be schema.table.column or table.column", s)
	}
	return parts[0], parts[1], parts[2], nil
}

// CanonicalColumn spells a mask column one way: schema.table.column, each
// name quoted only where SQL needs it (QuoteIdent). Masks, test
// expectations and decisions all use this form, and the gateway spells a
// result column's origin the same way before comparing.
func CanonicalColumn(s string) (string, error) {
	sc, t, c, err := ParseColumn(s)
	if err != nil {
		return "", err
	}
	return QuoteIdent(sc) + "." + QuoteIdent(t) + "." + QuoteIdent(c), nil
}

// QuoteIdent returns name as SQL would need it written: unchanged when it is
// a plain lower-case identifier, otherwise double-quoted.
func QuoteIdent(name string) string {
	if plainIdentRE.MatchString(name) {
		return name
	}
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

var plainIdentRE = regexp.MustCompile(`^[a-z_][a-z0-9_$]*$`)

// splitIdents splits a dotted name whose parts are plain identifiers
// (folded to lower case) or double-quoted ones ("" is a quote).
func splitIdents(s string) ([]string, error) {
	var parts []string
	for i := 0; ; {
		if i < len(s) && s[i] == '"' {
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(s) {
					return nil, fmt.Errorf("unterminated quoted name")
				}
				if s[j] == '"' {
					if j+1 < len(s) && s[j+1] == '"' {
						b.WriteByte('"')
						j += 2
						continue
					}
					break
				}
				b.WriteByte(s[j])
				j++
			}
			if b.Len() == 0 {
				return nil, fmt.Errorf("empty quoted name")
			}
			parts = append(parts, b.String())
			i = j + 1
		} else {
			j := i
			for j < len(s) && s[j] != '.' {
				j++
			}
			p := s[i:j]
			if !sqlIdentRE.MatchString(p) {
				return nil, fmt.Errorf("%q is not a plain SQL identifier; double-quote names with other characters", p)
			}
			parts = append(parts, strings.ToLower(p))
			i = j
		}
		if i == len(s) {
			return parts, nil
		}
		if s[i] != '.' {
			return nil, fmt.Errorf("expected '.' after a quoted name")
		}
		i++
	}
}

func (v *validator) mask(mk Mask) {
	ref := At("mask", mk.Name)
	if len(mk.Resources) == 0 {
		v.add(CodeMissingAttribute, ref.Attribute("resources"), "resources is required: name the postgres or kubernetes_cluster resources this mask applies to")
	}
	// kind is the kind of the mask's resources; a mask hides one kind of
	// thing (result columns, or object fields), so they are all of one.
	kind := ""
	for i, name := range mk.Resources {
		k, ok := v.resources[name]
		switch {
		case !ok:
			v.add(CodeUnknownReference, ref.Attribute("resources").Elem(i), "resource %q is not defined", name)
		case k != KindPostgres && k != KindKubernetes:
			v.add(CodeInvalidValue, ref.Attribute("resources").Elem(i), "resource %q is a %s; masks apply to postgres and kubernetes_cluster resources", name, k)
		case kind == "":
			kind = k
		case k != kind:
			v.add(CodeMixedKinds, ref.Attribute("resources").Elem(i), "resource %q is a %s but this mask already applies to %s resources; a mask hides one kind of value (postgres result columns, or kubernetes_cluster object fields); split it into one mask per kind", name, k, kind)
		}
	}
	pgTargets := len(mk.Columns) > 0 || len(mk.Detectors) > 0
	if kind == "" {
		// No resource says (none is defined, or the mask is checked on
		// its own, as the Terraform provider does): what it hides does.
		switch {
		case len(mk.Fields) > 0 && pgTargets:
			v.add(CodeConflict, ref.Attribute("fields"), "set fields (Kubernetes object fields, for kubernetes_cluster resources) or columns and detectors (PostgreSQL result values, for postgres resources), not both: a mask applies to one kind of resource")
		case len(mk.Fields) > 0:
			kind = KindKubernetes
		case pgTargets:
			kind = KindPostgres
		default:
			v.add(CodeMissingAttribute, ref, "a mask must say what it hides: set columns or detectors (postgres resources), or fields (kubernetes_cluster resources)")
		}
	}
	switch kind {
	case KindPostgres:
		if len(mk.Fields) > 0 {
			v.add(CodeConflict, ref.Attribute("fields"), "fields names Kubernetes object fields, for masks of kubernetes_cluster resources; this mask applies to postgres resources: name what it hides with columns or detectors")
		}
		if !pgTargets {
			v.add(CodeMissingAttribute, ref, "set columns or detectors (or both): a mask must say what it hides")
		}
	case KindKubernetes:
		if len(mk.Fields) == 0 {
			v.add(CodeMissingAttribute, ref.Attribute("fields"), "fields is required: name the Kubernetes object fields this mask hides, such as secrets/data")
		}
		for _, attr := range []struct {
			name string
			set  bool
		}{{"columns", len(mk.Columns) > 0}, {"detectors", len(mk.Detectors) > 0}, {"allow_in_predicates", mk.AllowInPredicates}} {
			if attr.set {
				v.add(CodeConflict, ref.Attribute(attr.name), "%s is for masks of postgres resources; this mask applies to kubernetes_cluster resources: name the object fields it hides with fields, such as secrets/data", attr.name)
			}
		}
	}
	for i, c := range mk.Columns {
		if _, _, _, err := ParseColumn(c); err != nil {
			v.add(CodeInvalidValue, ref.Attribute("columns").Elem(i), "%v", err)
		}
	}
	for i, d := range mk.Detectors {
		if !slices.Contains(MaskDetectors, d) {
			v.add(CodeInvalidValue, ref.Attribute("detectors").Elem(i), "%q is not a detector; use one of %s", d, quoteList(MaskDetectors))
		}
	}
	fields := map[string]int{} // canonical spelling -> first index
	for i, s := range mk.Fields {
		f, err := ParseKubernetesField(s)
		if err != nil {
			v.add(CodeInvalidValue, ref.Attribute("fields").Elem(i), "%v", err)
			continue
		}
		if first, dup := fields[f.String()]; dup {
			v.add(CodeDuplicateName, ref.Attribute("fields").Elem(i), "field %q is already listed (fields[%d]); keep one", s, first)
			continue
		}
		fields[f.String()] = i
	}
	v.oneOf(ref.Attribute("method"), mk.Method, maskMethods)
	switch {
	case mk.Method == MaskHash && mk.HashKey == "":
		v.add(CodeMissingAttribute, ref.Attribute("hash_key"), "the hash method needs hash_key, a secret reference to the HMAC key, so that hashes cannot be reversed by guessing")
	case mk.Method != MaskHash && mk.HashKey != "":
		v.add(CodeConflict, ref.Attribute("hash_key"), "hash_key is only used by the hash method")
	}
	v.secret(ref.Attribute("hash_key"), mk.HashKey)
}
