package celpolicy

// MaskPlan is how a PostgreSQL request's results are masked: for each
// statement, each result column's mask. It is decided from the statement's
// lineage (where each column's values come from) before the statement is
// sent, so a result that could not be masked is refused instead of run.
type MaskPlan struct {
	Statements []StatementMasks `json:"statements"`
	// Notes say what the plan assumed, such as resolving names without a
	// database.
	Notes []string `json:"notes,omitempty"`
}

// StatementMasks is one statement's result columns, in order.
type StatementMasks struct {
	Text    string       `json:"text"`
	Outputs []OutputMask `json:"outputs"`
}

// OutputMask is one result column (or, for * over a relation whose columns
// are not known, several: Columns 0).
type OutputMask struct {
	Name    string `json:"name"`
	Columns int    `json:"columns"`
	// Method is the mask applied to the column's values ("" for none):
	// the strongest of its masked sources'.
	Method string `json:"method,omitempty"`
	Mask   string `json:"mask,omitempty"`
	// Sources are the masked columns whose values reach this one.
	Sources []MaskedSource `json:"sources,omitempty"`
}

// MaskedSource is a masked column that reaches an output.
type MaskedSource struct {
	Column string `json:"column"`
	Mask   string `json:"mask"`
	// Method is the mask's method, or the one it becomes for a computed
	// value (Derived): partial and hash of a computed value would reveal
	// more than of the column, so partial becomes redact.
	Method  string `json:"method"`
	Derived bool   `json:"derived,omitempty"`
}

// Retext returns a copy of the plan whose statements all name text. A plan
// decided for one text is reused for every text of the same shape (a
// cached decision, always of one statement), and the plan a request
// carries, and its recording shows, must name that request's own text,
// not the first one's: the constants differ.
func (p *MaskPlan) Retext(text string) *MaskPlan {
	if p == nil {
		return nil
	}
	c := *p
	c.Statements = make([]StatementMasks, len(p.Statements))
	for i, st := range p.Statements {
		st.Text = text
		c.Statements[i] = st
	}
	return &c
}

// Masked reports whether any output is masked.
func (p *MaskPlan) Masked() bool {
	if p == nil {
		return false
	}
	for _, st := range p.Statements {
		for _, o := range st.Outputs {
			if o.Method != "" {
				return true
			}
		}
	}
	return false
}
