package celpolicy

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common"
	celast "cel.dev/cel-go/common/ast"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// Policy is a compiled model, ready to decide requests. It is immutable and
// safe for concurrent use; a new bundle means a new Policy, swapped in whole.
type Policy struct {
	model    *bundle.Model
	revision uint64
	// sql analyses SQL text (WithSQL); nil in the gateway runtime.
	sql func(string) *PostgresRequest
	// guard applies the PostgreSQL gateway's own checks and mask plan to
	// a query's decision (WithSQL); nil in the gateway runtime, which
	// applies them itself with its catalog.
	guard func(*bundle.Postgres, *PostgresRequest, Decision) Decision
	envs  *envs

	resources  map[string]*resourceEntry
	providers  map[string]*bundle.IdentityProvider // by name
	identities map[string][]*compiledIdentity      // by provider name
	identity   map[string]*compiledIdentity        // by identity name
	rules      map[string]*compiledRule            // by "policy/rule"
	ruleCount  int
	// literals are the string constants of all CEL expressions; Diff
	// builds probe requests from them.
	literals map[string]bool
	// dynamic are the programs that read now or session.
	dynamic map[cel.Program]bool
	// cacheable memoizes Cacheable by resource and request kind.
	cacheable sync.Map
}

type compiledIdentity struct {
	id    *bundle.Identity
	match cel.Program // nil when matched by subject
}

type compiledPolicy struct {
	name       string
	identities map[string]bool
	groups     map[string]bool
	everyone   bool
}

// covers reports whether the policy applies to the caller.
func (p *compiledPolicy) covers(id *Identity) bool {
	if p.everyone || p.identities[id.Name] {
		return true
	}
	for _, g := range id.Groups {
		if p.groups[g] {
			return true
		}
	}
	return false
}

type compiledRule struct {
	ref    string // "policy/rule"
	policy *compiledPolicy
	rule   *bundle.Rule
	prg    cel.Program // nil: always matches
}

type compiledMask struct {
	mask *bundle.Mask
	// columns are fully qualified, whatever spelling the model used.
	columns []string
	// fields are a Kubernetes mask's object fields, spelled canonically.
	fields []string
	unless cel.Program // nil: always applies
}

type resourceEntry struct {
	value Resource
	// rules by request kind: only the rules of policies that cover this
	// resource and apply to that kind. This index is what keeps a decision's
	// cost independent of the number of unrelated resources and rules.
	rules map[string][]*compiledRule
	masks []*compiledMask
	// postgres is the resource's definition, for a PostgreSQL resource.
	postgres *bundle.Postgres
	// admins is a PostgreSQL resource's admins predicate.
	admins cel.Program
}

// Option configures Compile.
type Option func(*Policy)

// WithRevision stamps decisions with the bundle revision.
func WithRevision(rev uint64) Option { return func(p *Policy) { p.revision = rev } }

// WithSQL gives the policy SQL analysis (sqlfacts.Query), which test
// blocks with `sql`, `eval` requests and diffs need, and the PostgreSQL
// gateway's own checks and mask plan (sqlfacts.StaticGuard), applied to
// every query decision so that tests and eval decide as the gateway does.
// The gateway's runtime compiles without it: its PostgreSQL proxy
// analyses statements and applies the guard itself, with the database's
// catalog. Without it, SQL is not understood and is denied.
func WithSQL(query func(sql string) *PostgresRequest, guard func(*bundle.Postgres, *PostgresRequest, Decision) Decision) Option {
	return func(p *Policy) { p.sql, p.guard = query, guard }
}

// FromPayload compiles a verified bundle payload.
func FromPayload(p *bundle.Payload, opts ...Option) (*Policy, error) {
	return Compile(&p.Model, append([]Option{WithRevision(p.Revision)}, opts...)...)
}

// Query is the PostgreSQL query request for sql, analysed with the
// policy's SQL analysis (WithSQL).
func (p *Policy) Query(sql string) *PostgresRequest {
	if p.sql == nil {
		return &PostgresRequest{Kind: "query", Statements: []Statement{}, Problem: "SQL cannot be analysed here (the policy was compiled without SQL analysis), so it is denied"}
	}
	return p.sql(sql)
}

// Compile validates a model and compiles all of its CEL. On failure the error
// is a bundle.Problems listing every problem found, each with a Ref (and for
// CEL a Span inside the expression), so front ends can point at the source.
// The model must not be modified afterwards.
func Compile(m *bundle.Model, opts ...Option) (*Policy, error) {
	if ps := m.Validate(); len(ps) > 0 {
		return nil, ps
	}
	envs, err := sharedEnvs()
	if err != nil {
		return nil, err
	}
	p := &Policy{
		model:      m,
		envs:       envs,
		resources:  map[string]*resourceEntry{},
		providers:  map[string]*bundle.IdentityProvider{},
		identities: map[string][]*compiledIdentity{},
		identity:   map[string]*compiledIdentity{},
		rules:      map[string]*compiledRule{},
		literals:   map[string]bool{},
		dynamic:    map[cel.Program]bool{},
	}
	for _, o := range opts {
		o(p)
	}
	c := &compiler{p: p}
	c.run()
	c.compileAll()
	if len(c.ps) > 0 {
		return nil, c.ps
	}
	return p, nil
}

// Check validates and compiles a model and returns its problems, if any.
func Check(m *bundle.Model) bundle.Problems {
	_, err := Compile(m)
	var ps bundle.Problems
	if errors.As(err, &ps) {
		return ps
	}
	if err != nil {
		return bundle.Problems{{Code: bundle.CodeInvalidValue, Message: err.Error()}}
	}
	return nil
}

// sharedEnvs builds the CEL environments once; they are immutable.
var sharedEnvs = sync.OnceValues(newEnvs)

type compiler struct {
	p    *Policy
	ps   bundle.Problems
	jobs []job
}

func (c *compiler) run() {
	p, m := c.p, c.p.model
	for i := range m.IdentityProviders {
		ip := &m.IdentityProviders[i]
		p.providers[ip.Name] = ip
	}
	for i := range m.Identities {
		id := &m.Identities[i]
		ci := &compiledIdentity{id: id}
		if id.Match != "" {
			c.compile(p.envs.identity, id.Match, bundle.At("identity", id.Name).Attribute("match"), func(prg cel.Program) { ci.match = prg })
		}
		p.identities[id.Provider] = append(p.identities[id.Provider], ci)
		p.identity[id.Name] = ci
	}
	for _, r := range m.Resources() {
		p.resources[r.Name] = &resourceEntry{
			value: Resource{Name: r.Name, Kind: r.Kind, Labels: r.Labels},
			rules: map[string][]*compiledRule{},
		}
	}
	for i := range m.Postgres {
		pgr := &m.Postgres[i]
		e := p.resources[pgr.Name]
		e.postgres = pgr
		if strings.TrimSpace(pgr.Admins) != "" {
			c.compile(p.envs.byKind[bundle.KindPostgres], pgr.Admins, bundle.At("postgres", pgr.Name).Attribute("admins"), func(prg cel.Program) { e.admins = prg })
		}
	}
	for i := range m.Policies {
		pol := &m.Policies[i]
		cp := &compiledPolicy{name: pol.Name, identities: set(pol.Identities), groups: set(pol.Groups)}
		cp.everyone = pol.Everyone
		kind := p.resources[pol.Resources[0]].value.Kind
		env := p.envs.byKind[kind]
		for j := range pol.Rules {
			r := &pol.Rules[j]
			cr := &compiledRule{ref: pol.Name + "/" + r.Name, policy: cp, rule: r}
			if strings.TrimSpace(r.When) != "" {
				c.compile(env, r.When, bundle.At("policy", pol.Name).InRule(r.Name).Attribute("when"), func(prg cel.Program) { cr.prg = prg })
			}
			p.rules[cr.ref] = cr
			p.ruleCount++
			kinds := r.On
			if len(kinds) == 0 {
				kinds = bundle.RequestKinds[kind]
			}
			for _, res := range pol.Resources {
				e := p.resources[res]
				for _, k := range kinds {
					e.rules[k] = append(e.rules[k], cr)
				}
			}
		}
	}
	for i := range m.Masks {
		mk := &m.Masks[i]
		cm := &compiledMask{mask: mk}
		for _, col := range mk.Columns {
			if canon, err := bundle.CanonicalColumn(col); err == nil {
				cm.columns = append(cm.columns, canon)
			}
		}
		for _, f := range mk.Fields {
			if kf, err := bundle.ParseKubernetesField(f); err == nil {
				cm.fields = append(cm.fields, kf.String())
			}
		}
		if strings.TrimSpace(mk.Unless) != "" {
			// The mask's resources are all of one kind (Validate), and its
			// unless sees that kind's request, as a policy's rules do.
			kind := p.resources[mk.Resources[0]].value.Kind
			c.compile(p.envs.byKind[kind], mk.Unless, bundle.At("mask", mk.Name).Attribute("unless"), func(prg cel.Program) { cm.unless = prg })
		}
		for _, res := range mk.Resources {
			p.resources[res].masks = append(p.resources[res].masks, cm)
		}
	}
}

func set(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}

// job is one expression to compile and where its program goes.
type job struct {
	env *cel.Env
	src string
	ref bundle.Ref
	set func(cel.Program)
}

// compiled is the outcome of compiling one source text in one environment.
type compiled struct {
	prg      cel.Program
	problems []bundle.Problem // Ref not yet set
	literals []string
	// dynamic: the expression reads now or session, so its result can
	// change for the same caller and request.
	dynamic bool
}

// compile queues an expression; run compiles the queue.
func (c *compiler) compile(env *cel.Env, src string, ref bundle.Ref, set func(cel.Program)) {
	c.jobs = append(c.jobs, job{env: env, src: src, ref: ref, set: set})
}

// compileAll compiles every queued expression. Identical texts in the same
// environment are compiled once (bundles generated from Terraform modules
// repeat conditions), and distinct ones in parallel: CEL parsing dominates
// the build of a large bundle, and cel.Env is safe for concurrent use.
// Results are applied in queue order, so problems come out deterministically.
func (c *compiler) compileAll() {
	type key struct {
		env *cel.Env
		src string
	}
	results := map[key]*compiled{}
	var order []key
	for _, j := range c.jobs {
		k := key{j.env, j.src}
		if _, ok := results[k]; !ok {
			results[k] = nil
			order = append(order, k)
		}
	}
	out := make([]*compiled, len(order))
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(runtime.GOMAXPROCS(0), max(len(order), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				out[i] = compileOne(order[i].env, order[i].src)
			}
		}()
	}
	for i := range order {
		next <- i
	}
	close(next)
	wg.Wait()
	for i, k := range order {
		results[k] = out[i]
	}
	for _, j := range c.jobs {
		r := results[key{j.env, j.src}]
		for _, pr := range r.problems {
			pr.Ref = j.ref
			c.ps = append(c.ps, pr)
		}
		for _, l := range r.literals {
			c.p.literals[l] = true
		}
		if r.prg != nil {
			j.set(r.prg)
			if r.dynamic {
				c.p.dynamic[r.prg] = true
			}
		}
	}
}

// compileOne parses, type-checks and cost-checks one boolean expression.
func compileOne(env *cel.Env, src string) *compiled {
	ast, iss := env.Parse(src)
	if iss != nil && iss.Err() != nil {
		return &compiled{problems: celIssues(src, bundle.CodeCELSyntax, iss.Errors())}
	}
	checked, iss := env.Check(ast)
	if iss != nil && iss.Err() != nil {
		return &compiled{problems: celIssues(src, bundle.CodeCELType, iss.Errors())}
	}
	if !checked.OutputType().IsExactType(cel.BoolType) {
		return &compiled{problems: []bundle.Problem{{Code: bundle.CodeCELType,
			Message: fmt.Sprintf("expression must be a bool, but it is %s", checked.OutputType()),
			Span:    &bundle.Span{Offset: 0, Length: len(src)}}}}
	}
	r := &compiled{}
	celast.PreOrderVisit(checked.NativeRep().Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		switch e.Kind() {
		case celast.LiteralKind:
			if s, ok := e.AsLiteral().Value().(string); ok {
				r.literals = append(r.literals, s)
			}
		case celast.IdentKind:
			if n := e.AsIdent(); n == "now" || n == "session" {
				r.dynamic = true
			}
		}
	}))
	est, err := env.EstimateCost(checked, estimator{})
	if err != nil {
		r.problems = []bundle.Problem{{Code: bundle.CodeCELCost, Message: fmt.Sprintf("cannot estimate the cost of the expression: %v", err)}}
		return r
	}
	if est.Max > StaticCostLimit {
		r.problems = []bundle.Problem{{Code: bundle.CodeCELCost,
			Message: fmt.Sprintf("expression is too expensive: its worst-case cost is %d, over the limit of %d; avoid nesting comprehensions over statements, tables and groups", est.Max, StaticCostLimit),
			Span:    &bundle.Span{Offset: 0, Length: len(src)}}}
		return r
	}
	prg, err := env.Program(checked, cel.CostLimit(RuntimeCostLimit), cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		r.problems = []bundle.Problem{{Code: bundle.CodeCELType, Message: err.Error()}}
		return r
	}
	r.prg = prg
	return r
}

// celIssues converts cel-go errors into problems with a byte span inside the
// expression. cel-go reports locations in characters; the span is in bytes,
// pointing at the offending token.
func celIssues(src string, code string, errs []*common.Error) []bundle.Problem {
	source := common.NewTextSource(src)
	var out []bundle.Problem
	for _, e := range errs {
		p := bundle.Problem{Code: code, Message: e.Message}
		if off, ok := source.LocationOffset(e.Location); ok && off >= 0 {
			p.Span = tokenSpan(src, runeToByte(src, int(off)))
		}
		out = append(out, p)
	}
	return out
}

func runeToByte(s string, runes int) int {
	i := 0
	for n := 0; n < runes && i < len(s); n++ {
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
	}
	return i
}

// tokenSpan widens an error offset to the token it points at. For a field
// selection cel-go points at the '.', while the user's mistake is the name
// after it, so the span moves onto that name.
func tokenSpan(src string, off int) *bundle.Span {
	if off >= len(src) {
		return &bundle.Span{Offset: len(src), Length: 0}
	}
	if src[off] == '.' {
		j := off + 1
		for j < len(src) && (src[j] == ' ' || src[j] == '\t' || src[j] == '\n' || src[j] == '\r') {
			j++
		}
		if j < len(src) && isIdentStart(rune(src[j])) {
			off = j
		}
	}
	end := off
	for end < len(src) {
		r, size := utf8.DecodeRuneInString(src[end:])
		if !isIdentPart(r) {
			break
		}
		end += size
	}
	if end == off {
		_, size := utf8.DecodeRuneInString(src[off:])
		end = off + size
	}
	return &bundle.Span{Offset: off, Length: end - off}
}

func isIdentStart(r rune) bool { return r == '_' || unicode.IsLetter(r) }
func isIdentPart(r rune) bool  { return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) }

// Model returns the compiled model.
func (p *Policy) Model() *bundle.Model { return p.model }

// Revision returns the bundle revision decisions are stamped with.
func (p *Policy) Revision() uint64 { return p.revision }

// RuleCount is the number of rules compiled.
func (p *Policy) RuleCount() int { return p.ruleCount }

// Rule returns a rule by "policy/rule".
func (p *Policy) Rule(ref string) (*bundle.Rule, bool) {
	r, ok := p.rules[ref]
	if !ok {
		return nil, false
	}
	return r.rule, true
}

// ResourceKind returns the kind of a named resource.
func (p *Policy) ResourceKind(name string) (string, bool) {
	e, ok := p.resources[name]
	if !ok {
		return "", false
	}
	return e.value.Kind, true
}

// approvalNeed is a review rule's approver spec with the defaults applied.
// The bundle was validated, so the durations parse.
func approvalNeed(rule, reason string, a *bundle.Approval) ApprovalNeed {
	dur := func(s string, def time.Duration) time.Duration {
		if d, err := time.ParseDuration(s); err == nil && d > 0 {
			return d
		}
		return def
	}
	timeout := dur(a.Timeout, bundle.DefaultApprovalTimeout)
	return ApprovalNeed{
		Rule: rule, Reason: reason, Groups: a.Groups, Count: max(a.Count, 1), Timeout: timeout,
		Hold: a.Holds(), Wait: min(dur(a.Wait, timeout), timeout),
		ValidFor: dur(a.ValidFor, bundle.DefaultApprovalValidity), Reusable: a.Reusable, Webhook: a.Webhook,
	}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// CheckExpression compiles one expression on its own: a rule condition or
// mask predicate for a resource kind, or with kind "" an identity's match.
// Its problems carry a Span but no Ref. Front ends that see one object at a
// time (the Terraform provider at plan time) use it; Compile checks the
// whole model.
func CheckExpression(kind, src string) []bundle.Problem {
	envs, err := sharedEnvs()
	if err != nil {
		return []bundle.Problem{{Code: bundle.CodeCELType, Message: err.Error()}}
	}
	env := envs.identity
	if kind != "" {
		if env = envs.byKind[kind]; env == nil {
			return []bundle.Problem{{Code: bundle.CodeInvalidValue, Message: fmt.Sprintf("unknown resource kind %q", kind)}}
		}
	}
	return compileOne(env, src).problems
}
