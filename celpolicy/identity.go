package celpolicy

import (
	"fmt"
	"slices"
	"strings"
)

// Token is what the gateway knows about a caller once its token has been
// verified: the issuer, the subject and the claims.
type Token struct {
	Issuer  string
	Subject string
	Claims  map[string]any
}

// ResolveIdentity maps a verified token, vouched for by the named identity
// provider, to the identity that policies see: its groups (from the
// provider's groups claim plus the matching identity's extra groups) and the
// name of the bundle identity it matches, if any.
//
// A token that matches two identities is an error rather than a guess: which
// one wins would decide what the caller may do. A match predicate that fails
// to evaluate is an error too. Callers deny the connection on error.
func (p *Policy) ResolveIdentity(provider string, tok Token) (Identity, error) {
	ip, ok := p.providers[provider]
	if !ok {
		return Identity{}, fmt.Errorf("identity provider %q is not defined in bundle revision %d", provider, p.revision)
	}
	if tok.Issuer != ip.Issuer {
		return Identity{}, fmt.Errorf("token issuer %q is not the issuer of identity provider %q (%q)", tok.Issuer, provider, ip.Issuer)
	}
	claim := ip.GroupsClaim
	if claim == "" {
		claim = "groups"
	}
	groups := claimGroups(tok.Claims[claim])
	for i := range groups {
		groups[i] = ip.GroupsPrefix + groups[i]
	}
	id := Identity{Issuer: tok.Issuer, Subject: tok.Subject, Claims: tok.Claims, Groups: groups}
	act := &activation{identity: &id}
	var matched []*compiledIdentity
	for _, ci := range p.identities[provider] {
		if ci.id.Subject != "" {
			if ci.id.Subject == tok.Subject {
				matched = append(matched, ci)
			}
			continue
		}
		ok, err := eval(ci.match, act)
		if err != nil {
			return Identity{}, fmt.Errorf("identity %q: match could not be evaluated: %w", ci.id.Name, err)
		}
		if ok {
			matched = append(matched, ci)
		}
	}
	switch len(matched) {
	case 0:
	case 1:
		id.Name = matched[0].id.Name
		id.Groups = append(id.Groups, matched[0].id.Groups...)
	default:
		names := make([]string, len(matched))
		for i, m := range matched {
			names[i] = m.id.Name
		}
		return Identity{}, fmt.Errorf("subject %q of %q matches several identities (%s); make their subject or match exclusive", tok.Subject, provider, strings.Join(names, ", "))
	}
	slices.Sort(id.Groups)
	id.Groups = slices.Compact(id.Groups)
	if id.Groups == nil {
		id.Groups = []string{}
	}
	return id, nil
}

// TokenGroups are the groups a token's groups claim carries, as the
// named provider reads it, before its prefix and any identity's extra
// groups: what a recording keeps so that the caller can be resolved again
// under another policy.
func (p *Policy) TokenGroups(provider string, tok Token) []string {
	claim := "groups"
	if ip, ok := p.providers[provider]; ok && ip.GroupsClaim != "" {
		claim = ip.GroupsClaim
	}
	g := claimGroups(tok.Claims[claim])
	if g == nil {
		g = []string{}
	}
	return g
}

// MatchClaims are the token's claims that the named provider's
// identities' match predicates name: what a recording keeps so that the
// caller can be resolved again (gatehouse impact) without keeping every
// claim. A claim counts as named when its name appears in a predicate's
// text, which may keep a claim more than needed, never fewer.
func (p *Policy) MatchClaims(provider string, tok Token) map[string]any {
	out := map[string]any{}
	for _, ci := range p.identities[provider] {
		if ci.id.Match == "" {
			continue
		}
		for k, v := range tok.Claims {
			if strings.Contains(ci.id.Match, k) {
				out[k] = v
			}
		}
	}
	return out
}

// claimGroups reads a groups claim: a list of strings, or one string.
// Values of other types are ignored rather than stringified, so that a
// malformed claim cannot produce a surprising group name.
func claimGroups(v any) []string {
	switch g := v.(type) {
	case string:
		if g == "" {
			return nil
		}
		return []string{g}
	case []string:
		return slices.Clone(g)
	case []any:
		out := make([]string, 0, len(g))
		for _, x := range g {
			if s, ok := x.(string); ok && s != "" {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}
