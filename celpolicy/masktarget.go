package celpolicy

import (
	"encoding/json"
	"fmt"
	"strings"
)

// MaskTarget is what a mask hides: the values of one result column (named
// by its origin, schema.table.column), or every value a detector
// recognises. Exactly one field is set. It reads and writes as the string
// "schema.table.column" or "detector:NAME", as decisions and tests always
// have.
type MaskTarget struct {
	Column   string
	Detector string
}

// detectorPrefix marks a detector target in the string form.
const detectorPrefix = "detector:"

// ParseMaskTarget reads the string form.
func ParseMaskTarget(s string) (MaskTarget, error) {
	if d, ok := strings.CutPrefix(s, detectorPrefix); ok {
		if d == "" {
			return MaskTarget{}, fmt.Errorf("mask target %q names no detector", s)
		}
		return MaskTarget{Detector: d}, nil
	}
	if s == "" {
		return MaskTarget{}, fmt.Errorf("empty mask target: want schema.table.column or detector:NAME")
	}
	return MaskTarget{Column: s}, nil
}

// String is the string form.
func (t MaskTarget) String() string {
	if t.Detector != "" {
		return detectorPrefix + t.Detector
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
