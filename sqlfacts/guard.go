package sqlfacts

import (
	"fmt"
	"slices"
	"strings"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

// Analysis is the SQL analysis front ends compile policies with: facts
// from SQL text, and the gateway's own checks and mask plan without a
// database (StaticGuard). `gatehouse eval`, `gatehouse check` and the
// Terraform provider's tests use it, so they decide as the gateway does.
func Analysis() celpolicy.Option { return celpolicy.WithSQL(Query, StaticGuard) }

// StaticGuard is Guard with the catalog that is known without a database:
// PostgreSQL's built-ins and the masked columns.
func StaticGuard(res *bundle.Postgres, req *celpolicy.PostgresRequest, d celpolicy.Decision) celpolicy.Decision {
	var cols []string
	for _, m := range d.Masks {
		if m.Target.Column != "" {
			cols = append(cols, m.Target.Column)
		}
	}
	g := Guard{Resource: res, Catalog: NewStaticCatalog(cols), Static: true}
	return g.Apply(req, d)
}

// Guard is what the PostgreSQL gateway enforces whatever the policy says,
// after the policy's decision: settings that change how SQL is parsed or
// names resolve, role switching when callers run as their own roles, and
// masks, which follow each result column's lineage and are decided before
// the statement reaches the database.
type Guard struct {
	Resource *bundle.Postgres
	Catalog  Catalog
	// Session resolves prepared statements and cursors defined earlier
	// in the caller's session; nil without one.
	Session Session
	// Static says the catalog is not the database's (eval): the plan
	// says so.
	Static bool
	// Lineage, when set, resolves a statement's lineage (a cached
	// LineageOf with Catalog and Session).
	Lineage func(sql string) ([]Lineage, error)
}

// parserSettings change how the server reads SQL text. The gateway parses
// with them fixed (UTF8, standard conforming strings), so a statement that
// changes one is refused whatever the policy says: after it, the server
// could read other statements than the gateway decided.
var parserSettings = map[string]bool{"standard_conforming_strings": true, "client_encoding": true, "*": true}

// roleSettings switch the session's role.
var roleSettings = map[string]bool{"role": true, "session_authorization": true, "*": true, "all": true}

// Protections are the gateway's own masks over PostgreSQL's catalog, kept
// in one place: what they cover, and for whom.
var Protections = []Protection{
	{Mask: "gatehouse:statistics", When: WhenMasked, Why: "planner statistics hold sample values of every analysed column (most common values, histogram bounds)",
		Columns: []string{
			"pg_catalog.pg_statistic.stavalues1", "pg_catalog.pg_statistic.stavalues2", "pg_catalog.pg_statistic.stavalues3",
			"pg_catalog.pg_statistic.stavalues4", "pg_catalog.pg_statistic.stavalues5",
			"pg_catalog.pg_statistic_ext_data.stxdmcv", "pg_catalog.pg_statistic_ext_data.stxdexpr",
		}},
	{Mask: "gatehouse:other-sessions", When: WhenNotAdmin, Why: "other sessions' SQL carries their literals",
		Columns: []string{
			"pg_catalog.pg_stat_get_activity.query", "pg_catalog.pg_stat_get_backend_activity.result",
			"*.pg_stat_statements.query",
		}},
}

// Protection is a built-in mask.
type Protection struct {
	Mask    string
	When    string
	Why     string
	Columns []string
}

// When a protection applies.
const (
	// WhenMasked: to callers with at least one column mask.
	WhenMasked = "masked"
	// WhenNotAdmin: to callers who do not administer the resource.
	WhenNotAdmin = "not admin"
)

// masked is one column mask (or protection) in force.
type masked struct {
	target string
	method string
	mask   string
	allow  bool
	system bool
}

// Apply checks a query's decision and fills in req.Masking. A refusal
// turns the decision into a deny that names the reason.
func (g *Guard) Apply(req *celpolicy.PostgresRequest, d celpolicy.Decision) celpolicy.Decision {
	if req == nil || req.Kind != "query" {
		return d
	}
	req.Masking = nil
	copies := 0
	for _, st := range req.Statements {
		if CopiesFromClient(st) {
			if copies++; copies > 1 {
				return refuse(d, "a query may hold one COPY FROM STDIN at most: the gateway follows one copy's data per query")
			}
		}
		if st.Command == "SHOW" {
			continue
		}
		if parserSettings[st.Setting] {
			return refuse(d, fmt.Sprintf("changing %s is refused by the gateway: its SQL parsing depends on it", st.Setting))
		}
		if roles := g.Resource.UpstreamRolesOrNil(); roles != nil {
			if roleSettings[st.Setting] {
				return refuse(d, fmt.Sprintf("%s of %s: callers of %q run as their own database role, which they cannot change", st.Command, st.Setting, g.Resource.Name))
			}
			if st.Command == "DO" && roles.MethodOrDefault() != bundle.RoleLogin {
				return refuse(d, fmt.Sprintf("DO blocks: callers of %q run as their own role by %s, which code the gateway cannot see could undo; use upstream_roles method \"login\" to allow them", g.Resource.Name, roles.MethodOrDefault()))
			}
		}
	}
	if d.Effect != bundle.EffectAllow && d.Effect != bundle.EffectReview {
		return d
	}
	ms := g.inForce(d)
	if len(ms) == 0 {
		return d
	}
	hasColumnMasks := slices.ContainsFunc(ms, func(m masked) bool { return !m.system })
	for _, st := range req.Statements {
		if st.Command != "SHOW" && st.Setting == "search_path" {
			return refuse(d, "changing search_path is refused while masks apply to you (other sessions' SQL is masked for callers who are not the resource's admins): masks follow names, and the gateway resolves names as your session did when it started")
		}
	}
	plan := &celpolicy.MaskPlan{Statements: []celpolicy.StatementMasks{}}
	if g.Static {
		plan.Notes = append(plan.Notes, "decided without a database: views, user functions and column lists are resolved by the gateway through the database's catalog, so results may differ for them")
	}
	for _, st := range req.Statements {
		if st.Via != "" {
			continue
		}
		var lins []Lineage
		var err error
		if g.Lineage != nil {
			lins, err = g.Lineage(st.Text)
		} else {
			lins, err = LineageOf(st.Text, g.Catalog, g.Session)
		}
		if err != nil {
			return refuse(d, fmt.Sprintf("the statement's lineage could not be resolved (%v), and masks apply", err))
		}
		for _, lin := range lins {
			sm, why := g.plan(&lin, ms, hasColumnMasks, st)
			if why != "" {
				return refuse(d, why)
			}
			sm.Text = st.Text
			plan.Statements = append(plan.Statements, sm)
		}
	}
	if hasColumnMasks {
		// After the plans, so that a definition over a masked table says
		// so first.
		for _, st := range req.Statements {
			if st.Via != "" {
				continue
			}
			if why := g.implicitCode(st); why != "" {
				return refuse(d, why)
			}
		}
	}
	req.Masking = plan
	d.Masking = plan
	return d
}

// CopiesFromClient reports whether a statement, as sent, is a COPY FROM
// STDIN: its data comes from the client after it starts.
func CopiesFromClient(st celpolicy.Statement) bool {
	return st.Command == "COPY" && st.CopyDirection == "from" && st.CopyTarget == "stdio" && st.Via == ""
}

// ProtectedFunction reports whether a function's result is covered by a
// protection that applies to a caller (admin says whether the caller
// administers the resource), for fast-path calls, which have no lineage.
func ProtectedFunction(schema, name string, admin bool) bool {
	if admin {
		return false
	}
	_, ok := ProtectedFunctions[schema+"."+name]
	_, any := ProtectedFunctions["*."+name]
	return ok || any
}

// Refused is the prefix of the reasons the guard gives, so that callers
// (and tests) can tell the gateway's refusals from the policy's.
const Refused = "refused by the gateway: "

func refuse(d celpolicy.Decision, why string) celpolicy.Decision {
	return celpolicy.Decision{
		Effect: bundle.EffectDeny, BundleRevision: d.BundleRevision, Admin: d.Admin,
		MatchedRules: d.MatchedRules, Reasons: []string{Refused + why}, Masks: []celpolicy.MaskAction{},
	}
}

// inForce lists the column masks of the decision and the protections that
// apply to the caller.
func (g *Guard) inForce(d celpolicy.Decision) []masked {
	var ms []masked
	for _, m := range d.Masks {
		if m.Target.Column != "" {
			ms = append(ms, masked{target: m.Target.Column, method: m.Method, mask: m.Mask, allow: m.AllowInPredicates})
		}
	}
	columnMasks := len(ms) > 0
	for _, p := range Protections {
		if (p.When == WhenMasked && columnMasks) || (p.When == WhenNotAdmin && !d.Admin) {
			for _, c := range p.Columns {
				ms = append(ms, masked{target: c, method: bundle.MaskRedact, mask: p.Mask, system: true})
			}
		}
	}
	return ms
}

func (g *Guard) find(ms []masked, column string) (masked, bool) {
	for _, m := range ms {
		if matchTarget(m.target, column) {
			return m, true
		}
	}
	return masked{}, false
}

// clauseNames says each clause in words, for refusals.
var clauseNames = map[string]string{
	"unique":    "a write checked by a unique index or exclusion constraint (whether it fails, or which row ON CONFLICT finds, says whether the value is there)",
	"reference": "a foreign key's check of a written value (whether it fails says whether the value is there)",
	"where":     "a WHERE condition", "join": "a join condition", "group": "GROUP BY", "having": "HAVING",
	"order": "ORDER BY", "window": "a window's PARTITION BY or ORDER BY", "distinct": "DISTINCT",
	"set": "UNION, INTERSECT or EXCEPT (which compare rows)", "case": "a CASE condition", "filter": "an aggregate's FILTER",
	"limit": "LIMIT or OFFSET", "expression": "a computation (an operator, a function, a cast)",
	"conflict": "ON CONFLICT", "execute": "EXECUTE's parameters", "sample": "TABLESAMPLE", "null test": "a computation",
}

func clauseName(c string) string {
	if n, ok := clauseNames[c]; ok {
		return n
	}
	return c
}

// plan decides one statement's masks, or why it must be refused.
func (g *Guard) plan(lin *Lineage, ms []masked, columnMasks bool, st celpolicy.Statement) (celpolicy.StatementMasks, string) {
	sm := celpolicy.StatementMasks{Outputs: []celpolicy.OutputMask{}}
	if len(lin.Failures) > 0 {
		// Whatever masks or protections apply, they cannot be planned
		// without the catalog: fail closed.
		return sm, fmt.Sprintf("%s; masks apply to you and cannot be planned without the database's catalog", lin.Failures[0])
	}
	if columnMasks {
		if len(lin.Problems) > 0 {
			return sm, fmt.Sprintf("%s; while masks apply, a statement must resolve completely", lin.Problems[0])
		}
		if len(lin.Opaque) > 0 {
			return sm, fmt.Sprintf("%s; while masks apply, every value's origin must be known", lin.Opaque[0])
		}
	}
	for _, fl := range lin.Flows {
		for _, s := range fl.Sources {
			m, ok := g.find(ms, s.Column)
			if !ok {
				continue
			}
			if dst, ok := g.find(ms, fl.Into); ok && dst.mask == m.mask {
				continue // back into a column the same mask covers
			}
			return sm, fmt.Sprintf("masked values of %s (mask %q) would be written to %s, where they could be read back unmasked", s.Column, m.mask, fl.Into)
		}
	}
	for _, u := range lin.Uses {
		if m, ok := g.find(ms, u.Column); ok && !m.allow {
			why := fmt.Sprintf("%s is masked (mask %q) and may not be used in %s: the answer would reveal what the mask hides", u.Column, m.mask, clauseName(u.Clause))
			if !m.system {
				why += "; the mask may allow it with allow_in_predicates = true"
			}
			return sm, why
		}
	}
	for _, rel := range lin.Alters {
		for _, m := range ms {
			if !m.system && strings.HasPrefix(m.target, rel+".") {
				return sm, fmt.Sprintf("%s has masked columns (mask %q); changing its definition (%s) could copy, expose or rename them", rel, m.mask, st.Command)
			}
		}
	}
	for _, o := range lin.Outputs {
		om := celpolicy.OutputMask{Name: o.Name, Columns: o.Columns}
		for _, s := range o.Sources {
			m, ok := g.find(ms, s.Column)
			if !ok {
				continue
			}
			method := m.method
			if s.Derived {
				method = DerivedMethod(method)
			}
			om.Sources = append(om.Sources, celpolicy.MaskedSource{Column: s.Column, Mask: m.mask, Method: method, Derived: s.Derived})
			if om.Method == "" || bundle.MaskStrength(method) > bundle.MaskStrength(om.Method) {
				om.Method, om.Mask = method, m.mask
			}
		}
		sm.Outputs = append(sm.Outputs, om)
	}
	if st.Command == "COPY" {
		for _, o := range sm.Outputs {
			if o.Method != "" {
				return sm, fmt.Sprintf("COPY ... TO would send %s, which is masked (mask %q), and the gateway cannot mask COPY data; use SELECT", o.Sources[0].Column, o.Mask)
			}
		}
	}
	return sm, ""
}

// DerivedMethod is the method a mask takes on a value computed from the
// column: partial would show part of a different string (the last four
// characters of substr(card, 1, 8) are not the card's), so it becomes
// redact; the others apply as they are.
func DerivedMethod(method string) string {
	if method == bundle.MaskPartial {
		return bundle.MaskRedact
	}
	return method
}

// ResolveCalls fills in what a catalog says of the functions a request
// calls: built in or not, and volatility. Every call is looked up as
// written (a built-in's unqualified name too: a user function could shadow
// it), and one that cannot be looked up becomes unknown: volatile, not
// built in.
func ResolveCalls(req *celpolicy.PostgresRequest, cat Catalog) {
	for i := range req.Statements {
		st := &req.Statements[i]
		changed := false
		for j := range st.Calls {
			c := &st.Calls[j]
			schema := c.Schema
			if c.Builtin {
				schema = ""
			}
			info, err := cat.Function(schema, c.Name)
			if err != nil || info == nil {
				if c.Builtin || c.Volatility != Unknown {
					c.Builtin, c.Volatility, changed = false, Unknown, true
				}
				continue
			}
			if info.Builtin != c.Builtin || info.Volatility != c.Volatility || info.Schema != c.Schema {
				c.Builtin, c.Volatility, c.Schema, changed = info.Builtin, info.Volatility, info.Schema, true
			}
		}
		if changed {
			st.VolatileFunctions = VolatileFunctions(st.Calls)
		}
	}
}

// AnalysisWith is Analysis with a database's catalog: user functions'
// volatility, views and column lists resolve as the gateway resolves them
// (`gatehouse eval --database`).
func AnalysisWith(cat Catalog) celpolicy.Option {
	query := func(sql string) *celpolicy.PostgresRequest {
		req := Query(sql)
		ResolveCalls(req, cat)
		return req
	}
	guard := func(res *bundle.Postgres, req *celpolicy.PostgresRequest, d celpolicy.Decision) celpolicy.Decision {
		g := Guard{Resource: res, Catalog: cat}
		return g.Apply(req, d)
	}
	return celpolicy.WithSQL(query, guard)
}
