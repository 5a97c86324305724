package bundle

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"
)

func sortByName[T any](xs []T, name func(T) string) {
	sort.SliceStable(xs, func(i, j int) bool { return name(xs[i]) < name(xs[j]) })
}

// sortedSet returns xs sorted and without duplicates; nil for an empty set,
// so that "unset" and "empty" encode the same way.
func sortedSet(xs []string) []string {
	if len(xs) == 0 {
		return nil
	}
	out := slices.Clone(xs)
	slices.Sort(out)
	return slices.Compact(out)
}

func emptyMapNil[M ~map[string]string](m M) M {
	if len(m) == 0 {
		return nil
	}
	return m
}

// Normalize puts a validated model into canonical form: top-level objects
// sorted by name, sets sorted and deduplicated, mask columns fully
// qualified, defaults made explicit where two spellings mean the same thing.
// Two front ends that describe the same policy produce the same normalised
// model, and so the same payload bytes. Rules keep their declaration order.
func (m *Model) Normalize() {
	sortByName(m.IdentityProviders, func(x IdentityProvider) string { return x.Name })
	for i := range m.IdentityProviders {
		p := &m.IdentityProviders[i]
		p.Audiences = sortedSet(p.Audiences)
		p.Algorithms = sortedSet(p.Algorithms)
		if p.GroupsClaim == "groups" {
			p.GroupsClaim = ""
		}
	}
	sortByName(m.Identities, func(x Identity) string { return x.Name })
	for i := range m.Identities {
		m.Identities[i].Groups = sortedSet(m.Identities[i].Groups)
	}
	sortByName(m.Postgres, func(x Postgres) string { return x.Name })
	for i := range m.Postgres {
		m.Postgres[i].Labels = emptyMapNil(m.Postgres[i].Labels)
		if t := m.Postgres[i].TLS; t != nil && *t == (TLS{}) {
			m.Postgres[i].TLS = nil
		}
	}
	sortByName(m.SSHHosts, func(x SSHHost) string { return x.Name })
	for i := range m.SSHHosts {
		m.SSHHosts[i].Labels = emptyMapNil(m.SSHHosts[i].Labels)
		m.SSHHosts[i].HostKey = strings.Join(strings.Fields(m.SSHHosts[i].HostKey)[:min(2, len(strings.Fields(m.SSHHosts[i].HostKey)))], " ")
	}
	sortByName(m.KubernetesClusters, func(x KubernetesCluster) string { return x.Name })
	for i := range m.KubernetesClusters {
		m.KubernetesClusters[i].Labels = emptyMapNil(m.KubernetesClusters[i].Labels)
	}
	sortByName(m.Policies, func(x Policy) string { return x.Name })
	for i := range m.Policies {
		p := &m.Policies[i]
		p.Resources = sortedSet(p.Resources)
		p.Identities = sortedSet(p.Identities)
		p.Groups = sortedSet(p.Groups)
		for j := range p.Rules {
			r := &p.Rules[j]
			r.On = sortedSet(r.On)
			if strings.TrimSpace(r.When) == "true" {
				r.When = ""
			}
			if a := r.Approval; a != nil {
				a.Groups = sortedSet(a.Groups)
				if a.Count == 1 {
					a.Count = 0
				}
				// One spelling per duration: "30m" and "1800s" are the same
				// policy and must give the same bytes.
				timeout := canonicalDuration(&a.Timeout, DefaultApprovalTimeout)
				canonicalDuration(&a.Wait, timeout)
				canonicalDuration(&a.ValidFor, DefaultApprovalValidity)
				if a.Hold != nil && *a.Hold {
					a.Hold = nil
				}
			}
		}
	}
	sortByName(m.Masks, func(x Mask) string { return x.Name })
	for i := range m.Masks {
		mk := &m.Masks[i]
		mk.Resources = sortedSet(mk.Resources)
		for j, c := range mk.Columns {
			if canon, err := CanonicalColumn(c); err == nil {
				mk.Columns[j] = canon
			}
		}
		mk.Columns = sortedSet(mk.Columns)
		mk.Detectors = sortedSet(mk.Detectors)
		for j, f := range mk.Fields {
			if kf, err := ParseKubernetesField(f); err == nil {
				mk.Fields[j] = kf.String()
			}
		}
		mk.Fields = sortedSet(mk.Fields)
	}
	sortByName(m.Tests, func(x Test) string { return x.Name })
	for i := range m.Tests {
		t := &m.Tests[i]
		t.Groups = sortedSet(t.Groups)
		if t.ExpectRules != nil {
			t.ExpectRules = append([]string{}, sortedSet(t.ExpectRules)...)
		}
		if t.ExpectMasks != nil {
			// Validate refuses two spellings of one column, so at most
			// one key maps to each normalised key; iterating in key order
			// keeps this deterministic regardless.
			norm := make(map[string]string, len(t.ExpectMasks))
			for _, k := range sortedMapKeys(t.ExpectMasks) {
				nk := k
				if canon, err := CanonicalColumn(k); err == nil {
					nk = canon
				}
				norm[nk] = t.ExpectMasks[k]
			}
			t.ExpectMasks = norm
		}
		t.Claims = canonicalJSON(t.Claims)
		t.Request = canonicalJSON(t.Request)
	}
}

// canonicalJSON re-encodes a JSON document with sorted keys and no
// insignificant whitespace. Invalid JSON is returned unchanged (Validate
// reports it).
func canonicalJSON(s string) string {
	if s == "" {
		return ""
	}
	var v any
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil || dec.More() {
		return s
	}
	if _, err := dec.Token(); err != io.EOF {
		return s // trailing data: leave it for Validate to report
	}
	b, err := marshalCanonical(v)
	if err != nil {
		return s
	}
	return string(b)
}

// marshalCanonical encodes v as compact JSON with sorted map keys and without
// HTML escaping. encoding/json already sorts map keys; struct fields come out
// in declaration order, which is fixed by this package.
func marshalCanonical(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// EncodePayload returns the canonical bytes of a payload.
func EncodePayload(p *Payload) ([]byte, error) {
	b, err := marshalCanonical(p)
	if err != nil {
		return nil, fmt.Errorf("bundle: encode payload: %w", err)
	}
	return b, nil
}

// DecodePayload parses payload bytes strictly: the schema version must be
// known, unknown fields are refused, and the bytes must be exactly the
// canonical encoding of what they decode to. A payload that differs in any
// way from what this package would write is not one it signed.
func DecodePayload(b []byte) (*Payload, error) {
	var head struct {
		SchemaVersion *int `json:"schema_version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("bundle: payload is not valid JSON: %w", err)
	}
	if head.SchemaVersion == nil {
		return nil, fmt.Errorf("bundle: payload has no schema_version")
	}
	if *head.SchemaVersion != SchemaVersion {
		return nil, &SchemaError{Got: *head.SchemaVersion}
	}
	var p Payload
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("bundle: decode payload: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("bundle: payload has trailing data")
	}
	again, err := EncodePayload(&p)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(again, b) {
		return nil, fmt.Errorf("bundle: payload is not in canonical form (differs at byte %d)", firstDiff(again, b))
	}
	return &p, nil
}

// SchemaError reports a payload written for a schema this build does not know.
type SchemaError struct{ Got int }

func (e *SchemaError) Error() string {
	return fmt.Sprintf("bundle: unsupported schema_version %d (this gatehouse understands %d); upgrade the gateway before rolling out this bundle", e.Got, SchemaVersion)
}

func sortedMapKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func firstDiff(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// canonicalDuration spells a duration one way ("30m" and "1800s" are the
// same policy and must give the same bytes), and as "" when it is the
// default. It returns the duration in force.
func canonicalDuration(s *string, def time.Duration) time.Duration {
	if *s == "" {
		return def
	}
	d, err := time.ParseDuration(*s)
	if err != nil {
		return def
	}
	*s = d.String()
	if d == def {
		*s = ""
	}
	return d
}
