package celpolicy

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// MaskTarget is what a mask hides: the values of one result column (named
// by its origin, schema.table.column), every value a detector recognises,
// or a field of Kubernetes objects (RESOURCE[.GROUP]/PATH, see
// bundle.ParseKubernetesField). Exactly one field is set. It reads and
// writes as the string "schema.table.column", "detector:NAME" or
// "kubernetes:RESOURCE[.GROUP]/PATH", as decisions and tests spell it.
type MaskTarget struct {
	Column   string
	Detector string
	// Field is a Kubernetes object field in its canonical spelling
	// (bundle.KubernetesField.String): "secrets/data".
	Field string
}

// detectorPrefix marks a detector target in the string form.
const detectorPrefix = "detector:"

// fieldPrefix marks a Kubernetes object field in the string form.
const fieldPrefix = bundle.KubernetesTargetPrefix

// ParseMaskTarget reads the string form.
func ParseMaskTarget(s string) (MaskTarget, error) {
	if d, ok := strings.CutPrefix(s, detectorPrefix); ok {
		if d == "" {
			return MaskTarget{}, fmt.Errorf("mask target %q names no detector", s)
		}
		return MaskTarget{Detector: d}, nil
	}
	if f, ok := strings.CutPrefix(s, fieldPrefix); ok {
		kf, err := bundle.ParseKubernetesField(f)
		if err != nil {
			return MaskTarget{}, fmt.Errorf("mask target %q: %w", s, err)
		}
		return MaskTarget{Field: kf.String()}, nil
	}
	if s == "" {
		return MaskTarget{}, fmt.Errorf("empty mask target: want schema.table.column, detector:NAME or kubernetes:RESOURCE[.GROUP]/PATH")
	}
	return MaskTarget{Column: s}, nil
}

// String is the string form.
func (t MaskTarget) String() string {
	switch {
	case t.Detector != "":
		return detectorPrefix + t.Detector
	case t.Field != "":
		return fieldPrefix + t.Field
	}
	return t.Column
}

// MarshalJSON writes the string form.
func (t MaskTarget) MarshalJSON() ([]byte, error) { return json.Marshal(t.String()) }

// UnmarshalJSON reads the string form.
func (t *MaskTarget) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := ParseMaskTarget(s)
	if err != nil {
		return err
	}
	*t = v
	return nil
}
