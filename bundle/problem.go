package bundle

import (
	"fmt"
	"strings"
)

// Problem codes are stable: CI tooling may match on them. Messages are for
// people and may change.
const (
	CodeInvalidName       = "invalid_name"
	CodeDuplicateName     = "duplicate_name"
	CodeMissingAttribute  = "missing_attribute"
	CodeUnknownReference  = "unknown_reference"
	CodeInlineSecret      = "inline_secret"
	CodeInvalidSecretRef  = "invalid_secret_ref"
	CodeInvalidValue      = "invalid_value"
	CodeConflict          = "conflicting_attributes"
	CodeMixedKinds        = "mixed_resource_kinds"
	CodeCELSyntax         = "cel_syntax"
	CodeCELType           = "cel_type"
	CodeCELCost           = "cel_cost"
	CodeUnsupportedSchema = "unsupported_schema"
)

// Ref locates a problem in the model independently of the front end that
// produced it. hclconfig maps a Ref to a file range; the Terraform provider
// maps it to an attribute path.
type Ref struct {
	// Kind is the object's block name ("policy", "postgres", ...).
	Kind string
	// Name is the object's name.
	Name string
	// Rule is the rule name, for problems inside a policy's rule.
	Rule string
	// Attr is the attribute ("when", "resources", "approval.groups", ...).
	// Empty means the object (or rule) as a whole.
	Attr string
	// Index is the element of a list attribute, or -1.
	Index int
}

// At returns a Ref to an object.
func At(kind, name string) Ref { return Ref{Kind: kind, Name: name, Index: -1} }

// Attribute returns a copy of r pointing at one attribute.
func (r Ref) Attribute(attr string) Ref { r.Attr = attr; r.Index = -1; return r }

// Elem returns a copy of r pointing at element i of its list attribute.
func (r Ref) Elem(i int) Ref { r.Index = i; return r }

// InRule returns a copy of r pointing into a rule of a policy.
func (r Ref) InRule(rule string) Ref { r.Rule = rule; return r }

func (r Ref) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %q", r.Kind, r.Name)
	if r.Rule != "" {
		fmt.Fprintf(&b, " rule %q", r.Rule)
	}
	if r.Attr != "" {
		fmt.Fprintf(&b, " %s", r.Attr)
		if r.Index >= 0 {
			fmt.Fprintf(&b, "[%d]", r.Index)
		}
	}
	return b.String()
}

// Span is a byte range inside an attribute's string value, used to point at
// the offending token of a CEL expression.
type Span struct {
	Offset int
	Length int
}

// Problem is one thing wrong with a model.
type Problem struct {
	Code    string
	Ref     Ref
	Message string
	// Span is set when the problem is at a known place inside the
	// attribute's string value (CEL errors).
	Span *Span
}

func (p Problem) Error() string {
	if p.Span != nil {
		return fmt.Sprintf("%s (offset %d): %s", p.Ref, p.Span.Offset, p.Message)
	}
	return fmt.Sprintf("%s: %s", p.Ref, p.Message)
}

// Problems is a list of problems that is itself an error.
type Problems []Problem

func (ps Problems) Error() string {
	switch len(ps) {
	case 0:
		return "no problems"
	case 1:
		return ps[0].Error()
	}
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return fmt.Sprintf("%d problems:\n  %s", len(ps), strings.Join(lines, "\n  "))
}

// Err returns ps as an error, or nil when there are none.
func (ps Problems) Err() error {
	if len(ps) == 0 {
		return nil
	}
	return ps
}
