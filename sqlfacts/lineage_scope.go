package sqlfacts

import (
	"slices"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// A range is one item of a FROM clause as lineage sees it: a name to
// qualify columns with and, per column, where its values come from.
type lrange struct {
	// alias qualifies columns: the alias, or the relation's own name.
	alias string
	// schema and name identify a base relation, for schema.table.column
	// references; empty for subqueries, functions and joins.
	schema, name string
	cols         []lcol
	// open: the relation's columns are not all known (a catalog without a
	// database). A name not in cols is taken to be a column of base.
	open bool
	base string // schema.name of an open relation
	// A join has the two sides as children; using lists its merged
	// (USING or NATURAL) columns, which come first in its * and hide the
	// children's columns of the same name.
	children []*lrange
	using    []lcol
	// hides is set on a join with an alias: its children's names are then
	// not visible.
	hides bool
}

type lcol struct {
	name string
	srcs []Source
}

// lookup finds an unqualified column. exact is false for a guess into an
// open relation.
func (r *lrange) lookup(name string) (srcs []Source, found, exact bool) {
	if len(r.children) > 0 {
		for _, c := range r.using {
			if c.name == name {
				return c.srcs, true, true
			}
		}
		var guess []Source
		guessed := false
		for _, ch := range r.children {
			s, ok, ex := ch.lookup(name)
			switch {
			case ok && ex:
				srcs, found, exact = mergeSources(srcs, s), true, true
			case ok:
				guess, guessed = mergeSources(guess, s), true
			}
		}
		if found {
			return srcs, true, true
		}
		return guess, guessed, false
	}
	for _, c := range r.cols {
		if c.name == name {
			return c.srcs, true, true
		}
	}
	if r.open {
		return []Source{{Column: r.base + "." + bundle.QuoteIdent(name)}}, true, false
	}
	return nil, false, false
}

// find returns the range a qualifier names, searching inside joins whose
// children are visible.
func (r *lrange) find(schema, alias string) *lrange {
	if schema == "" && r.alias == alias && r.alias != "" {
		return r
	}
	if schema != "" && r.schema == schema && r.name == alias && len(r.children) == 0 {
		return r
	}
	if r.hides {
		return nil
	}
	for _, ch := range r.children {
		if x := ch.find(schema, alias); x != nil {
			return x
		}
	}
	return nil
}

// expand lists a range's columns as * does. An open relation contributes
// one output of unknown width.
func (r *lrange) expand() []Output {
	if len(r.children) > 0 {
		var out []Output
		names := map[string]bool{}
		for _, c := range r.using {
			out = append(out, Output{Name: c.name, Sources: c.srcs, Columns: 1})
			names[c.name] = true
		}
		for _, ch := range r.children {
			for _, o := range ch.expand() {
				if o.Columns == 1 && names[o.Name] {
					continue
				}
				out = append(out, o)
			}
		}
		return out
	}
	out := make([]Output, 0, len(r.cols)+1)
	if r.open {
		var srcs []Source
		for _, c := range r.cols {
			srcs = mergeSources(srcs, c.srcs)
		}
		return append(out, Output{Name: r.alias + ".*", Sources: srcs, Columns: 0})
	}
	for _, c := range r.cols {
		out = append(out, Output{Name: c.name, Sources: c.srcs, Columns: 1})
	}
	return out
}

// whole is the sources of a whole-row reference: every column's, derived
// (the row is a composite value).
func (r *lrange) whole() []Source {
	var srcs []Source
	for _, o := range r.expand() {
		srcs = mergeSources(srcs, o.Sources)
	}
	return derive(srcs)
}

// names lists the column names a range is known to have.
func (r *lrange) names() []string {
	var out []string
	for _, o := range r.expand() {
		if o.Columns == 1 {
			out = append(out, o.Name)
		}
	}
	return out
}

// A frame is one query level's FROM clause. parent is the enclosing
// query's frame, for correlated references.
type frame struct {
	items  []*lrange
	parent *frame
	ctes   *cteScope
	// outputs are the query's target list, for ORDER BY and GROUP BY
	// references by name or position.
	outputs []Output
}

type cteScope struct {
	names  map[string]*lrange
	parent *cteScope
}

func (c *cteScope) find(name string) *lrange {
	for ; c != nil; c = c.parent {
		if r, ok := c.names[name]; ok {
			return r
		}
	}
	return nil
}

// column resolves an unqualified column name: the innermost query level
// that has it wins, as in SQL. Without a database, relations may be open;
// a column known to exist (a masked one) anywhere in scope is preferred to
// a guess that it belongs to an open relation.
func (f *frame) column(name string) ([]Source, bool) {
	srcs, found, _ := f.columnExact(name)
	return srcs, found
}

// columnExact is column, and whether the answer is known rather than
// guessed into an open relation.
func (f *frame) columnExact(name string) ([]Source, bool, bool) {
	for fr := f; fr != nil; fr = fr.parent {
		var srcs []Source
		found := false
		for _, it := range fr.items {
			if s, ok, exact := it.lookup(name); ok && exact {
				srcs, found = mergeSources(srcs, s), true
			}
		}
		if found {
			return srcs, true, true
		}
	}
	for fr := f; fr != nil; fr = fr.parent {
		var srcs []Source
		found := false
		for _, it := range fr.items {
			if s, ok, _ := it.lookup(name); ok {
				srcs, found = mergeSources(srcs, s), true
			}
		}
		if found {
			return srcs, true, false
		}
	}
	return nil, false, false
}

// rangeFor finds the range a qualifier names, innermost level first.
func (f *frame) rangeFor(schema, alias string) *lrange {
	for fr := f; fr != nil; fr = fr.parent {
		for _, it := range fr.items {
			if r := it.find(schema, alias); r != nil {
				return r
			}
		}
	}
	return nil
}

// output finds a target-list entry by name, for ORDER BY and GROUP BY.
func (f *frame) output(name string) (Output, bool) {
	if f == nil {
		return Output{}, false
	}
	for _, o := range f.outputs {
		if o.Name == name {
			return o, true
		}
	}
	return Output{}, false
}

// mergeSources adds b's sources to a, keeping the first-seen order. A
// column reached both unchanged and computed counts as computed: the value
// may be either, so it is masked as the weaker case allows.
func mergeSources(a, b []Source) []Source {
	for _, s := range b {
		i := slices.IndexFunc(a, func(x Source) bool { return x.Column == s.Column })
		switch {
		case i < 0:
			a = append(a, s)
		case s.Derived:
			a[i].Derived = true
		}
	}
	return a
}

// derive marks sources as computed from, not carried unchanged.
func derive(srcs []Source) []Source {
	if len(srcs) == 0 {
		return nil
	}
	out := make([]Source, len(srcs))
	for i, s := range srcs {
		out[i] = Source{Column: s.Column, Derived: true}
	}
	return out
}
