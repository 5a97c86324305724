package celpolicy

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// DiffReport is a semantic comparison of two policies.
type DiffReport struct {
	// Objects lists model objects added, removed or changed.
	Objects []ObjectChange `json:"objects"`
	// Access lists every probe whose decision differs, grouped by caller,
	// resource and change of effect.
	Access []AccessChange `json:"access"`
	// Probes is how many (caller, resource, request) combinations both
	// policies decided.
	Probes int `json:"probes"`
	// Truncated is set when the probe set hit its size limit.
	Truncated bool `json:"truncated,omitempty"`
}

// ObjectChange is one added, removed or changed object.
type ObjectChange struct {
	Change string        `json:"change"` // added, removed, changed
	Kind   string        `json:"kind"`
	Name   string        `json:"name"`
	Fields []FieldChange `json:"fields,omitempty"`
}

// FieldChange is one changed field, by path ("rule[read].when").
type FieldChange struct {
	Field string `json:"field"`
	Old   string `json:"old,omitempty"`
	New   string `json:"new,omitempty"`
}

// AccessChange is a group of probes whose decision changed the same way for
// the same caller and resource.
type AccessChange struct {
	// Caller is "identity NAME", "group NAME" or "any caller".
	Caller   string        `json:"caller"`
	Resource string        `json:"resource"`
	Old      bundle.Effect `json:"old"`
	New      bundle.Effect `json:"new"`
	// Summary reads like "gained allow" or "lost allow (now review)".
	Summary string `json:"summary"`
	// Requests are the probe requests affected.
	Requests []string `json:"requests"`
	// Rules are the rules that decided the new outcome (or, for a lost
	// effect, the old one).
	Rules []string `json:"rules"`
}

// Empty reports whether the policies are equivalent as far as the diff can
// tell.
func (d *DiffReport) Empty() bool { return len(d.Objects) == 0 && len(d.Access) == 0 }

// maxProbes bounds the decisions a diff makes on each side.
const maxProbes = 200_000

// Diff compares two compiled policies: object by object, and by deciding the
// same probe requests with both and reporting who gained or lost what.
func Diff(oldP, newP *Policy) *DiffReport {
	r := &DiffReport{Objects: diffObjects(oldP.model, newP.model), Access: []AccessChange{}}
	if r.Objects == nil {
		r.Objects = []ObjectChange{}
	}
	callers := probeCallers(oldP, newP)
	resources := map[string]string{}
	for _, p := range []*Policy{oldP, newP} {
		for name, e := range p.resources {
			resources[name] = e.value.Kind
		}
	}
	now := time.Now()
	type key struct {
		caller, resource string
		old, new         bundle.Effect
	}
	groups := map[key]*AccessChange{}
	var order []key
	for _, resName := range sortedKeys(resources) {
		kind := resources[resName]
		reqs := probeRequests(kind, resName, oldP, newP)
		for _, c := range callers {
			for _, pr := range reqs {
				if r.Probes >= maxProbes {
					r.Truncated = true
					break
				}
				r.Probes++
				in := &Input{Identity: c.identity, Resource: resName, Request: pr.req, Now: now, Session: Session{ID: "diff", StartedAt: now}}
				od := decideIfKind(oldP, in, kind)
				nd := decideIfKind(newP, in, kind)
				if od.Effect == nd.Effect {
					continue
				}
				k := key{c.label, resName, od.Effect, nd.Effect}
				g, ok := groups[k]
				if !ok {
					g = &AccessChange{Caller: c.label, Resource: resName, Old: od.Effect, New: nd.Effect, Summary: summarize(od.Effect, nd.Effect)}
					groups[k] = g
					order = append(order, k)
				}
				g.Requests = append(g.Requests, pr.label)
				rules := nd.Rules()
				if nd.Effect == bundle.EffectDeny && od.Effect != bundle.EffectDeny {
					if len(rules) == 0 {
						rules = od.Rules()
					}
				}
				for _, rr := range rules {
					if !slices.Contains(g.Rules, rr) {
						g.Rules = append(g.Rules, rr)
					}
				}
			}
		}
	}
	for _, k := range order {
		g := groups[k]
		slices.Sort(g.Rules)
		if g.Rules == nil {
			g.Rules = []string{}
		}
		r.Access = append(r.Access, *g)
	}
	return r
}

// decideIfKind decides in with p, treating a resource that p defines with
// another kind (or not at all) as denied.
func decideIfKind(p *Policy, in *Input, kind string) Decision {
	if k, ok := p.ResourceKind(in.Resource); !ok || k != kind {
		return deny(p.revision, fmt.Sprintf("resource %q is not a %s here", in.Resource, kind))
	}
	return p.Decide(in)
}

func summarize(oldE, newE bundle.Effect) string {
	if newE.Rank() > oldE.Rank() {
		if newE == bundle.EffectAllow && oldE == bundle.EffectReview {
			return "gained allow (was review)"
		}
		return "gained " + string(newE)
	}
	if oldE == bundle.EffectAllow && newE == bundle.EffectReview {
		return "lost allow (now review)"
	}
	return "lost " + string(oldE)
}

type probeCaller struct {
	label    string
	identity Identity
}

// probeCallers are the named identities of both policies (with their own
// groups), one member of each group either policy names, and a caller with
// no identity and no group.
func probeCallers(ps ...*Policy) []probeCaller {
	ids := map[string]*bundle.Identity{}
	groups := map[string]bool{}
	for _, p := range ps {
		for i := range p.model.Identities {
			id := &p.model.Identities[i]
			if _, ok := ids[id.Name]; !ok {
				ids[id.Name] = id
			}
			for _, g := range id.Groups {
				groups[g] = true
			}
		}
		for _, pol := range p.model.Policies {
			for _, g := range pol.Groups {
				groups[g] = true
			}
			for _, r := range pol.Rules {
				if r.Approval != nil {
					for _, g := range r.Approval.Groups {
						groups[g] = true
					}
				}
			}
		}
		for _, t := range p.model.Tests {
			for _, g := range t.Groups {
				groups[g] = true
			}
		}
	}
	var out []probeCaller
	for _, name := range sortedKeys(ids) {
		id := ids[name]
		subject := id.Subject
		if subject == "" {
			subject = name
		}
		gs := slices.Clone(id.Groups)
		if gs == nil {
			gs = []string{}
		}
		out = append(out, probeCaller{label: "identity " + name, identity: Identity{Name: name, Subject: subject, Groups: gs, Claims: map[string]any{}}})
	}
	for _, g := range sortedKeys(groups) {
		out = append(out, probeCaller{label: "group " + g, identity: Identity{Subject: "probe", Groups: []string{g}, Claims: map[string]any{}}})
	}
	out = append(out, probeCaller{label: "any caller", identity: Identity{Subject: "probe", Groups: []string{}, Claims: map[string]any{}}})
	return out
}

type probe struct {
	label string
	req   Request
}

var lowerIdent = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// quoteIdent spells a name so that PostgreSQL reads it back unchanged.
func quoteIdent(s string) string {
	if lowerIdent.MatchString(s) {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// probeRequests builds the requests to decide for one resource: every test
// request of either policy for it, and requests built from what the rules
// mention.
func probeRequests(kind, resource string, ps ...*Policy) []probe {
	// The newer policy analyses the probes' SQL (both were compiled by
	// the same build).
	an := ps[len(ps)-1]
	literals := map[string]bool{}
	var tests []*bundle.Test
	for _, p := range ps {
		for l := range p.literals {
			literals[l] = true
		}
		for i := range p.model.Tests {
			if p.model.Tests[i].Resource == resource {
				tests = append(tests, &p.model.Tests[i])
			}
		}
	}
	seen := map[string]bool{}
	var out []probe
	add := func(label string, r Request) {
		if seen[label] {
			return
		}
		seen[label] = true
		out = append(out, probe{label: label, req: r})
	}
	idents := []string{}
	for _, l := range sortedKeys(literals) {
		if lowerIdent.MatchString(l) {
			idents = append(idents, l)
		}
	}
	switch kind {
	case bundle.KindPostgres:
		add("connect", Connect())
		// Tables the tests and masks name come first: they are real. Then
		// every schema they use crossed with every identifier the rules
		// mention, which is how a rule about an unseen table is probed.
		schemas := map[string]bool{"public": true}
		real := map[string]bool{}
		for _, t := range tests {
			if t.SQL == "" {
				continue
			}
			add(t.SQL, an.Query(t.SQL))
			for _, s := range an.Query(t.SQL).Statements {
				for _, tb := range s.Tables {
					schemas[tb.Schema] = true
					real[quoteIdent(tb.Schema)+"."+quoteIdent(tb.Name)] = true
				}
			}
		}
		for _, p := range ps {
			for _, m := range p.model.Masks {
				for _, c := range m.Columns {
					if s, t, _, err := bundle.ParseColumn(c); err == nil {
						schemas[s] = true
						real[quoteIdent(s)+"."+quoteIdent(t)] = true
					}
				}
			}
		}
		tables := sortedKeys(real)
		for _, s := range sortedKeys(schemas) {
			for _, n := range idents {
				if t := quoteIdent(s) + "." + n; !real[t] {
					tables = append(tables, t)
				}
			}
		}
		for _, t := range tables {
			{
				for _, q := range []string{
					"SELECT * FROM " + t + " WHERE id = 1",
					"INSERT INTO " + t + " DEFAULT VALUES",
					"UPDATE " + t + " SET id = id WHERE id = 1",
					"UPDATE " + t + " SET id = id",
					"DELETE FROM " + t + " WHERE id = 1",
					"DELETE FROM " + t,
					"TRUNCATE " + t,
					"DROP TABLE " + t,
					"COPY " + t + " TO STDOUT",
					"COPY " + t + " FROM STDIN",
					"COPY " + t + " TO PROGRAM 'cat'",
				} {
					add(q, an.Query(q))
				}
			}
		}
		for _, f := range idents {
			add("SELECT "+f+"()", an.Query("SELECT "+f+"()"))
			add("function call "+f, FunctionCall(f))
		}
		for _, q := range []string{
			"SELECT 1", "BEGIN", "COMMIT", "SHOW search_path", "SET ROLE postgres", "RESET ROLE",
			"SET SESSION AUTHORIZATION postgres", "SET search_path = public", "SELECT set_config('role', 'postgres', false)",
			"DO $$ BEGIN NULL; END $$", "CREATE FUNCTION probe() RETURNS int LANGUAGE sql AS 'SELECT 1'",
			"CALL probe()", "CREATE TABLE probe (id int)", "COPY probe FROM '/tmp/probe'", "PREPARE probe AS SELECT 1", "EXECUTE probe",
		} {
			add(q, an.Query(q))
		}
	case bundle.KindSSHHost:
		add("connect", &SSHRequest{Kind: "connect"})
		add("shell", &SSHRequest{Kind: "shell"})
		add("subsystem sftp", &SSHRequest{Kind: "subsystem", Subsystem: "sftp"})
		add("forward localhost:5432", &SSHRequest{Kind: "forward", ForwardHost: "localhost", ForwardPort: 5432})
		for _, l := range sortedKeys(literals) {
			add("exec: "+l, Exec(l))
		}
		for _, t := range tests {
			if r, err := an.ParseRequest(kind, []byte(t.Request)); err == nil {
				add(describeRequest(r), r)
			}
		}
	case bundle.KindKubernetes:
		// resources are "GROUP/RESOURCE" ("/secrets" in the core group).
		resources := map[string]bool{"/pods": true, "/secrets": true, "/configmaps": true, "/deployments": true}
		namespaces := map[string]bool{"default": true}
		var testReqs []*KubernetesRequest
		for _, t := range tests {
			if r, err := an.ParseRequest(kind, []byte(t.Request)); err == nil {
				kr := r.(*KubernetesRequest)
				testReqs = append(testReqs, kr)
				resources[kr.APIGroup+"/"+kr.Resource] = true
				if kr.Namespace != "" {
					namespaces[kr.Namespace] = true
				}
			}
		}
		// The resources masks name are real, like the tables of
		// PostgreSQL masks.
		for _, p := range ps {
			for _, m := range p.model.Masks {
				for _, f := range m.Fields {
					if kf, err := bundle.ParseKubernetesField(f); err == nil {
						resources[kf.Group+"/"+kf.Resource] = true
					}
				}
			}
		}
		for _, l := range idents {
			resources["/"+l] = true
		}
		for _, kr := range testReqs {
			add(describeRequest(kr), kr)
		}
		for _, gr := range sortedKeys(resources) {
			group, res, _ := strings.Cut(gr, "/")
			for _, ns := range sortedKeys(namespaces) {
				for _, verb := range []string{"get", "list", "watch", "create", "update", "patch", "delete"} {
					kr := &KubernetesRequest{Kind: "api", Verb: verb, APIGroup: group, Resource: res, Namespace: ns}
					add(describeRequest(kr), kr)
				}
			}
		}
	}
	return out
}

// diffObjects compares the models object by object.
func diffObjects(a, b *bundle.Model) []ObjectChange {
	var out []ObjectChange
	collect := func(m *bundle.Model) map[string]map[string]any {
		objs := map[string]map[string]any{}
		put := func(kind string, list any) {
			var items []map[string]any
			raw, _ := json.Marshal(list)
			_ = json.Unmarshal(raw, &items)
			for _, it := range items {
				name, _ := it["name"].(string)
				objs[kind+"\x00"+name] = it
			}
		}
		put("identity_provider", m.IdentityProviders)
		put("identity", m.Identities)
		put(bundle.KindPostgres, m.Postgres)
		put(bundle.KindSSHHost, m.SSHHosts)
		put(bundle.KindKubernetes, m.KubernetesClusters)
		put("policy", m.Policies)
		put("mask", m.Masks)
		put("test", m.Tests)
		return objs
	}
	oa, ob := collect(a), collect(b)
	keys := map[string]bool{}
	for k := range oa {
		keys[k] = true
	}
	for k := range ob {
		keys[k] = true
	}
	for _, k := range sortedKeys(keys) {
		kind, name, _ := strings.Cut(k, "\x00")
		x, inA := oa[k]
		y, inB := ob[k]
		switch {
		case !inA:
			out = append(out, ObjectChange{Change: "added", Kind: kind, Name: name})
		case !inB:
			out = append(out, ObjectChange{Change: "removed", Kind: kind, Name: name})
		default:
			fa, fb := map[string]string{}, map[string]string{}
			flatten("", x, fa)
			flatten("", y, fb)
			var fields []FieldChange
			fk := map[string]bool{}
			for f := range fa {
				fk[f] = true
			}
			for f := range fb {
				fk[f] = true
			}
			for _, f := range sortedKeys(fk) {
				if fa[f] != fb[f] {
					fields = append(fields, FieldChange{Field: f, Old: fa[f], New: fb[f]})
				}
			}
			if len(fields) > 0 {
				out = append(out, ObjectChange{Change: "changed", Kind: kind, Name: name, Fields: fields})
			}
		}
	}
	return out
}

// flatten turns a JSON value into path -> JSON text. Lists of named objects
// (rules) are keyed by name, so that reordering them is not a change and a
// changed rule is reported by name.
func flatten(prefix string, v any, out map[string]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			flatten(p, val, out)
		}
	case []any:
		named := len(x) > 0
		for _, it := range x {
			m, ok := it.(map[string]any)
			if !ok {
				named = false
				break
			}
			if _, ok := m["name"].(string); !ok {
				named = false
				break
			}
		}
		if named {
			for _, it := range x {
				m := it.(map[string]any)
				flatten(fmt.Sprintf("%s[%s]", prefix, m["name"]), m, out)
			}
			return
		}
		out[prefix] = jsonText(x)
	default:
		if prefix == "name" || strings.HasSuffix(prefix, "].name") {
			return
		}
		out[prefix] = jsonText(x)
	}
}

// writeBlock prints a field value: a multi-line string (a heredoc CEL
// expression) line by line, anything else as its JSON.
func writeBlock(w io.Writer, sign, v string) {
	var str string
	if json.Unmarshal([]byte(v), &str) == nil && strings.Contains(str, "\n") {
		for _, line := range strings.Split(strings.TrimRight(str, "\n"), "\n") {
			fmt.Fprintf(w, "        %s %s\n", sign, line)
		}
		return
	}
	fmt.Fprintf(w, "        %s %s\n", sign, v)
}

func jsonText(v any) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	return strings.TrimSuffix(b.String(), "\n")
}

// WriteText prints the report for people.
func (d *DiffReport) WriteText(w io.Writer) {
	if d.Empty() {
		fmt.Fprintf(w, "No changes: the objects are the same and all %d probe decisions agree.\n", d.Probes)
		return
	}
	fmt.Fprintf(w, "Objects (%d changed)\n", len(d.Objects))
	if len(d.Objects) == 0 {
		fmt.Fprintf(w, "  none\n")
	}
	for _, o := range d.Objects {
		sign := map[string]string{"added": "+", "removed": "-", "changed": "~"}[o.Change]
		fmt.Fprintf(w, "  %s %s %q %s\n", sign, o.Kind, o.Name, o.Change)
		for _, f := range o.Fields {
			switch {
			case f.Old == "":
				fmt.Fprintf(w, "      %s: + %s\n", f.Field, f.New)
			case f.New == "":
				fmt.Fprintf(w, "      %s: - %s\n", f.Field, f.Old)
			default:
				fmt.Fprintf(w, "      %s:\n", f.Field)
				writeBlock(w, "-", f.Old)
				writeBlock(w, "+", f.New)
			}
		}
		if o.Kind == "identity" && slices.ContainsFunc(o.Fields, func(f FieldChange) bool { return f.Field == "match" }) {
			fmt.Fprintf(w, "      note: a changed match decides which tokens become %q; the access probes below do not cover that, so review it by hand\n", o.Name)
		}
	}
	trunc := ""
	if d.Truncated {
		trunc = ", truncated at the probe limit"
	}
	fmt.Fprintf(w, "\nAccess (%d probe requests decided by both policies%s)\n", d.Probes, trunc)
	if len(d.Access) == 0 {
		fmt.Fprintf(w, "  no decision changed\n")
	}
	sort.SliceStable(d.Access, func(i, j int) bool {
		if d.Access[i].Caller != d.Access[j].Caller {
			return d.Access[i].Caller < d.Access[j].Caller
		}
		return d.Access[i].Resource < d.Access[j].Resource
	})
	for _, a := range d.Access {
		sign := "+"
		if a.New.Rank() < a.Old.Rank() {
			sign = "-"
		}
		fmt.Fprintf(w, "  %s %s %s on %q for %d request(s) (%s -> %s)", sign, a.Caller, a.Summary, a.Resource, len(a.Requests), a.Old, a.New)
		if len(a.Rules) > 0 {
			fmt.Fprintf(w, " via %s", strings.Join(a.Rules, ", "))
		}
		fmt.Fprintln(w)
		for i, r := range a.Requests {
			if i == 5 {
				fmt.Fprintf(w, "      ... and %d more\n", len(a.Requests)-5)
				break
			}
			fmt.Fprintf(w, "      %s\n", r)
		}
	}
}
