package sqlfacts

import (
	"slices"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Redacted is what a secret in SQL text is replaced with.
const Redacted = "'[redacted]'"

// RedactSecrets returns sql with the secrets it carries as string
// constants replaced by Redacted, for everything that keeps or shows a
// statement's text: the recording, approvers, the session index. A
// caller's own statement can carry a credential: `ALTER ROLE app PASSWORD
// '…'`, a user mapping's `OPTIONS (password '…')`, a subscription's
// `CONNECTION 'host=… password=…'`, a connection string given to dblink.
// The statement still runs as sent; only its text at rest is redacted.
//
// What counts, found in the parse tree, never by matching text:
//   - the value of an option named password or sslpassword (role
//     options, generic options of user mappings, servers and foreign
//     tables);
//   - a subscription's CONNECTION string;
//   - the first argument of a dblink function, and the second of
//     dblink_connect(name, connstr), when it is a connection string (it
//     holds "=" or "://") rather than a connection's name.
//
// The constants are then found with PostgreSQL's own scanner, by the
// locations the parser gives. Text that does not parse is returned as it
// is (the gateway refuses it, and records it as sent: there is nothing to
// find secrets in); so is text that holds none of "password", "connection",
// "dblink" and a Unicode escape, which is all of it that could name one.
//
// Code kept as a string (a function's body, a DO block, SQL given to
// dblink or query_to_xml) is not looked into: hiding it would hide what
// ran, and a caller could hide any code by mentioning a password in it.
func RedactSecrets(sql string) string {
	if !mayHoldSecret(sql) {
		return sql
	}
	tree, err := pg.Parse(sql)
	if err != nil {
		return sql
	}
	var f secretFinder
	for _, raw := range tree.Stmts {
		f.stmt = raw
		f.visit(raw.ProtoReflect())
	}
	if len(f.options) == 0 && len(f.constants) == 0 && len(f.connections) == 0 {
		return sql
	}
	scan, err := pg.Scan(sql)
	if err != nil {
		return sql
	}
	spans := f.spans(scan.Tokens)
	if len(spans) == 0 {
		return sql
	}
	var b strings.Builder
	last := 0
	for _, sp := range spans {
		b.WriteString(sql[last:sp[0]])
		b.WriteString(Redacted)
		last = sp[1]
	}
	b.WriteString(sql[last:])
	return b.String()
}

// mayHoldSecret is RedactSecrets' fast path, one pass over the text (it
// runs for every statement recorded). Keywords and the names of options
// are ASCII, in any case; an identifier or a constant spelled with
// Unicode escapes (U&"p\0061ssword") is caught by its "U&".
func mayHoldSecret(sql string) bool {
	for i := 0; i < len(sql); i++ {
		var w string
		switch sql[i] | 0x20 { // ASCII lower case; other bytes never match
		case 'p':
			w = "password"
		case 'c':
			w = "connection"
		case 'd':
			w = "dblink"
		case 'u':
			w = "u&"
		default:
			continue
		}
		if hasFoldAt(sql, i, w) {
			return true
		}
	}
	return false
}

// hasFoldAt reports whether s holds ASCII word w (lower case) at i, in
// any case.
func hasFoldAt(s string, i int, w string) bool {
	if len(s)-i < len(w) {
		return false
	}
	for j := 0; j < len(w); j++ {
		c := s[i+j]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != w[j] {
			return false
		}
	}
	return true
}

// secretFinder collects where secrets are, from the parse tree.
type secretFinder struct {
	stmt *pg.RawStmt
	// options are the locations of options named password: their value
	// is the first string constant from there.
	options []int32
	// constants are the locations of string constants that are
	// connection strings.
	constants []int32
	// connections are the statements (start, end) whose CONNECTION
	// string is a secret.
	connections [][2]int32
}

func (f *secretFinder) visit(m protoreflect.Message) {
	switch n := m.Interface().(type) {
	case *pg.DefElem:
		// Only an option given a string: PASSWORD NULL, DROP password or
		// password = 1 has no constant of its own, and the first one
		// after it would be another clause's or statement's, hidden
		// from the recording and the approvers though no secret.
		if isPasswordOption(n.Defname) && n.Arg.GetString_() != nil {
			f.options = append(f.options, n.Location)
		}
	case *pg.FuncCall:
		f.constants = append(f.constants, dblinkConnStrings(n)...)
	case *pg.CreateSubscriptionStmt, *pg.AlterSubscriptionStmt:
		start := f.stmt.StmtLocation
		end := start + f.stmt.StmtLen
		if f.stmt.StmtLen == 0 {
			end = 1<<31 - 1 // to the end of the text
		}
		f.connections = append(f.connections, [2]int32{start, end})
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				f.visit(l.Get(i).Message())
			}
		case fd.Message() != nil && !fd.IsMap():
			f.visit(v.Message())
		}
		return true
	})
}

// isPasswordOption reports whether an option's value is a password:
// password itself, and libpq's sslpassword (a user mapping's option too).
func isPasswordOption(name string) bool {
	return strings.EqualFold(name, "password") || strings.EqualFold(name, "sslpassword")
}

// dblinkConnStrings are the locations of a dblink function's connection
// strings given as constants (cast or not): its first argument, when it
// is one (it holds "=" or "://") rather than a connection's name, and
// dblink_connect's second, dblink_connect(name, connstr).
func dblinkConnStrings(n *pg.FuncCall) []int32 {
	if len(n.Funcname) == 0 || len(n.Args) == 0 {
		return nil
	}
	name := strings.ToLower(n.Funcname[len(n.Funcname)-1].GetString_().GetSval())
	if !strings.HasPrefix(name, "dblink") {
		return nil
	}
	var out []int32
	for i, a := range n.Args {
		if i > 1 || i == 1 && name != "dblink_connect" && name != "dblink_connect_u" {
			break
		}
		if tc := a.GetTypeCast(); tc != nil {
			a = tc.Arg
		}
		c := a.GetAConst()
		if c == nil || c.GetSval() == nil {
			continue
		}
		if conn := c.GetSval().Sval; strings.Contains(conn, "=") || strings.Contains(conn, "://") {
			out = append(out, c.Location)
		}
	}
	return out
}

// spans turns what the tree said into the byte ranges of string
// constants, sorted and without overlaps.
func (f *secretFinder) spans(tokens []*pg.ScanToken) [][2]int {
	isString := func(t *pg.ScanToken) bool { return t.Token == pg.Token_SCONST || t.Token == pg.Token_USCONST }
	var out [][2]int
	add := func(t *pg.ScanToken) { out = append(out, [2]int{int(t.Start), int(t.End)}) }
	// The first string constant at or after each option's name.
	for _, loc := range f.options {
		for _, t := range tokens {
			if t.Start >= loc && isString(t) {
				add(t)
				break
			}
		}
	}
	// The constant that starts at each location.
	for _, loc := range f.constants {
		for _, t := range tokens {
			if t.Start == loc && isString(t) {
				add(t)
				break
			}
		}
	}
	// The string after CONNECTION in each subscription statement.
	for _, c := range f.connections {
		after := false
		for _, t := range tokens {
			if t.Start < c[0] || t.Start >= c[1] {
				continue
			}
			if t.Token == pg.Token_CONNECTION {
				after = true
			} else if after && isString(t) {
				add(t)
				break
			}
		}
	}
	slices.SortFunc(out, func(a, b [2]int) int { return a[0] - b[0] })
	out = slices.CompactFunc(out, func(a, b [2]int) bool { return a[0] == b[0] })
	return out
}
