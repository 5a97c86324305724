package celpolicy

import (
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// MustCompile compiles a model for a test, failing the test with every
// problem when it does not compile. Other packages' tests use it to get a
// Policy in one line.
func MustCompile(tb testing.TB, m *bundle.Model, opts ...Option) *Policy {
	tb.Helper()
	if ps := m.Validate(); len(ps) == 0 {
		m.Normalize()
	}
	p, err := Compile(m, opts...)
	if err != nil {
		tb.Fatalf("compile: %v", err)
	}
	return p
}
