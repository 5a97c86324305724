package sqlfacts

import (
	"fmt"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

// Code the database runs without a statement naming it (a trigger, a
// rule, an operator's function, a column default, a row-level security
// policy) is not in any statement's lineage: masks cannot follow what it
// reads, and its results, errors and row counts answer questions about
// masked values. So while column masks apply, statements that install such
// code or such predicates are refused.

// installsCode lists the commands that install code or predicates the
// database later runs implicitly, with what each installs.
var installsCode = map[string]string{
	"CREATE FUNCTION":             "a function, which triggers, operators, casts and defaults could run unseen",
	"CREATE PROCEDURE":            "a procedure",
	"ALTER FUNCTION":              "a function, which triggers, operators, casts and defaults could run unseen",
	"ALTER PROCEDURE":             "a procedure",
	"ALTER ROUTINE":               "a function, which triggers, operators, casts and defaults could run unseen",
	"CREATE OPERATOR":             "an operator, whose function runs wherever the operator is written",
	"ALTER OPERATOR":              "an operator, whose functions run wherever the operator is written",
	"CREATE OPERATOR CLASS":       "an operator class, whose functions run in sorts and indexes",
	"CREATE OPERATOR FAMILY":      "an operator family, whose functions run in sorts and indexes",
	"ALTER OPERATOR FAMILY":       "an operator family, whose functions run in sorts and indexes",
	"CREATE AGGREGATE":            "an aggregate, whose functions run wherever it is called",
	"ALTER AGGREGATE":             "an aggregate, whose functions run wherever it is called",
	"CREATE TRIGGER":              "a trigger, which runs its function on writes that do not name it",
	"CREATE EVENT TRIGGER":        "an event trigger, which runs its function on DDL that does not name it",
	"ALTER EVENT TRIGGER":         "an event trigger, which runs its function on DDL that does not name it",
	"CREATE RULE":                 "a rule, whose actions run in place of or beside the statements it rewrites",
	"CREATE POLICY":               "a row-level security policy, whose predicates run on reads and writes that do not name them",
	"ALTER POLICY":                "a row-level security policy, whose predicates run on reads and writes that do not name them",
	"CREATE CAST":                 "a cast, whose function runs wherever the cast applies",
	"CREATE TRANSFORM":            "a transform, whose functions run in procedural code",
	"CREATE CONVERSION":           "an encoding conversion, whose function runs on text it converts",
	"CREATE LANGUAGE":             "a procedural language",
	"CREATE ACCESS METHOD":        "an access method, whose handler runs on the relations that use it",
	"CREATE FOREIGN DATA WRAPPER": "a foreign-data wrapper, whose handler and validator run unseen",
	"ALTER FOREIGN DATA WRAPPER":  "a foreign-data wrapper, whose handler and validator run unseen",
	"CREATE TEXT SEARCH PARSER":   "a text search parser, whose functions run in text search",
	"CREATE TEXT SEARCH TEMPLATE": "a text search template, whose functions run in text search",
}

// holdsExpressions lists the commands whose expressions (column defaults,
// generated columns, CHECK constraints, index expressions, a domain's
// constraints) run later on statements that do not name them: each is
// parsed, and refused when one of its expressions calls code that is not
// built in.
var holdsExpressions = map[string]bool{
	"CREATE TABLE": true, "ALTER TABLE": true, "CREATE FOREIGN TABLE": true, "ALTER FOREIGN TABLE": true,
	"ALTER VIEW": true, "ALTER MATERIALIZED VIEW": true, "CREATE INDEX": true, "CREATE STATISTICS": true,
	"CREATE DOMAIN": true, "ALTER DOMAIN": true, "CREATE TYPE": true, "ALTER TYPE": true, "CREATE SCHEMA": true,
}

// likeCopiesCode are the parts of CREATE TABLE ... (LIKE t INCLUDING ...)
// that copy expressions: constraints, defaults, generated columns and
// indexes (CREATE_TABLE_LIKE_* in PostgreSQL's parsenodes.h).
const likeCopiesCode = 1<<2 | 1<<3 | 1<<4 | 1<<6

// implicitCode says why a statement, as sent, installs code or a predicate
// the database would later run without a statement naming it; "" when it
// does not.
func (g *Guard) implicitCode(st celpolicy.Statement) string {
	if st.Command == "ALTER SCHEMA" {
		// Masks name their columns by schema: a schema renamed takes its
		// tables out from under them.
		return "ALTER SCHEMA could rename a schema, and masks name their columns by schema (public.customers.card_number): while masks apply, schemas are not renamed"
	}
	if what, ok := installsCode[st.Command]; ok {
		return fmt.Sprintf("%s installs %s; while masks apply, code the database runs implicitly is refused: masks cannot follow what it reads", st.Command, what)
	}
	if !holdsExpressions[st.Command] {
		return ""
	}
	tree, err := pg.Parse(st.Text)
	if err != nil {
		return fmt.Sprintf("%s could not be parsed (%v), and masks apply", st.Command, err)
	}
	for _, raw := range tree.Stmts {
		if why := g.implicitIn(st.Command, nodeMessage(raw.Stmt)); why != "" {
			return why
		}
	}
	return ""
}

// implicitIn walks one parse node and its children.
func (g *Guard) implicitIn(command string, m protoreflect.Message) string {
	if m == nil {
		return ""
	}
	refused := func(what string) string {
		return fmt.Sprintf("%s %s; while masks apply, code the database runs implicitly is refused: masks cannot follow what it reads", command, what)
	}
	switch x := m.Interface().(type) {
	case *pg.FuncCall:
		q := names(x.Funcname)
		if len(q) == 0 {
			break
		}
		schema, name := "", q[len(q)-1]
		if len(q) >= 2 {
			schema = q[len(q)-2]
		}
		info, err := g.Catalog.Function(schema, name)
		switch {
		case err != nil || info == nil:
			return refused(fmt.Sprintf("calls %s, which is not known to the gateway, in an expression the database runs later (a default, a generated column, a constraint or an index)", displayName(schema, name)))
		case !info.Builtin:
			if info.Schema != "" {
				schema = info.Schema
			}
			return refused(fmt.Sprintf("calls %s, which is not built in, in an expression the database runs later (a default, a generated column, a constraint or an index)", displayName(schema, name)))
		case dynamicSQL[name]:
			return refused(fmt.Sprintf("calls %s, which runs SQL named in its arguments, in an expression the database runs later", name))
		case len(protectedColumns(info)) > 0:
			return refused(fmt.Sprintf("calls %s, whose output the gateway protects (other sessions' statements, statistics), in an expression the database runs later, where no statement's lineage shows it", name))
		}
	case *pg.A_Expr:
		if why := operatorCode(g.Catalog, x.Name); why != "" {
			return refused(fmt.Sprintf("uses an operator the gateway cannot take for a built-in (%s) in an expression the database runs later", why))
		}
	case *pg.TableLikeClause:
		if x.Options&likeCopiesCode != 0 {
			return refused("copies another table's defaults, constraints or indexes (LIKE ... INCLUDING), whose expressions the gateway does not see")
		}
	case *pg.AlterTableCmd:
		switch x.Subtype {
		case pg.AlterTableType_AT_EnableTrig, pg.AlterTableType_AT_EnableAlwaysTrig, pg.AlterTableType_AT_EnableReplicaTrig,
			pg.AlterTableType_AT_EnableTrigAll, pg.AlterTableType_AT_EnableTrigUser,
			pg.AlterTableType_AT_EnableRule, pg.AlterTableType_AT_EnableAlwaysRule, pg.AlterTableType_AT_EnableReplicaRule:
			return refused("enables a trigger or rule, which runs on writes that do not name it")
		}
	case *pg.CreateTrigStmt:
		return refused("installs a trigger, which runs its function on writes that do not name it")
	case *pg.RuleStmt:
		return refused("installs a rule, whose actions run in place of or beside the statements it rewrites")
	case *pg.CreatePolicyStmt, *pg.AlterPolicyStmt:
		return refused("installs a row-level security policy, whose predicates run on reads and writes that do not name them")
	case *pg.DefineStmt:
		// CREATE TYPE name (INPUT = ..., OUTPUT = ...): a base type's
		// functions run on every value of the type.
		return refused("defines a base type, whose functions run on every value of the type")
	case *pg.AlterTypeStmt:
		return refused("changes a type's functions, which run on every value of the type")
	case *pg.CreateRangeStmt:
		for _, p := range x.Params {
			if d := p.GetDefElem(); d != nil && (d.Defname == "subtype_diff" || d.Defname == "canonical") {
				return refused(fmt.Sprintf("names a %s function, which runs on every value of the range type", d.Defname))
			}
		}
	}
	why := ""
	eachChild(m, func(_ protoreflect.FieldDescriptor, child protoreflect.Message) bool {
		if n, ok := child.Interface().(*pg.Node); ok {
			child = nodeMessage(n)
		}
		why = g.implicitIn(command, child)
		return why == ""
	})
	return why
}
