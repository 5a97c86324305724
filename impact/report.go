package impact

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// FailOn says which changes make Fail true: widen, narrow, any or none.
type FailOn string

// Fail reports whether the report has a change that fails.
func (r *Report) Fail(on FailOn) bool {
	switch on {
	case "widen":
		return r.Widened > 0 || r.Changed > 0
	case "narrow":
		return r.Narrowed > 0 || r.Changed > 0
	case "any":
		return r.Widened+r.Narrowed+r.Changed > 0
	}
	return false
}

// WriteJSON writes the report as JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report for a terminal.
func (r *Report) WriteText(w io.Writer) error {
	fmt.Fprintf(w, "impact of %s → %s\n", r.Old, r.New)
	fmt.Fprintf(w, "  traffic: %s: %s requests, %s distinct (caller, resource, request)%s\n", r.Traffic,
		count(r.Requests), count(int64(r.Shapes)), sessions(r.Sessions))
	if len(r.Changes) == 0 {
		fmt.Fprintln(w, "  no decision changes")
	} else {
		fmt.Fprintf(w, "  requests widened: %s · narrowed: %s · masks exchanged: %s\n", count(r.Widened), count(r.Narrowed), count(r.Changed))
	}
	for _, c := range r.Changes {
		fmt.Fprintf(w, "\n%s  %s on %s: %s → %s\n", strings.ToUpper(string(c.Direction)), c.Identity, c.Resource, c.From, c.To)
		fmt.Fprintf(w, "  %s (%s distinct), decided by %s\n", plural(c.Requests, "request"), count(int64(c.Shapes)), c.Rule)
		if c.Reason != "" {
			fmt.Fprintf(w, "  reason: %s\n", c.Reason)
		}
		if c.Approximate > 0 {
			fmt.Fprintf(w, "  approximate: %s of them from recordings without the token's groups\n", count(c.Approximate))
		}
		for _, e := range c.Examples {
			fmt.Fprintf(w, "    %s\n", oneLine(e, 160))
		}
	}
	r.writeNotes(w, "")
	return nil
}

// WriteMarkdown writes the report for a pull-request comment: a summary,
// a table of changes and the examples, kept short.
func (r *Report) WriteMarkdown(w io.Writer) error {
	fmt.Fprintf(w, "### Impact on recorded traffic\n\n")
	fmt.Fprintf(w, "`%s` → `%s`, replayed over %s requests (%s distinct) from `%s`%s.\n\n", r.Old, r.New,
		count(r.Requests), count(int64(r.Shapes)), r.Traffic, sessions(r.Sessions))
	if len(r.Changes) == 0 {
		fmt.Fprintf(w, "**No decision changes.**\n")
		r.writeNotes(w, "> ")
		return nil
	}
	fmt.Fprintf(w, "**Widened: %s · narrowed: %s · masks exchanged: %s** requests.\n\n", count(r.Widened), count(r.Narrowed), count(r.Changed))
	fmt.Fprintf(w, "| | identity | resource | before | after | requests | distinct | decided by |\n|---|---|---|---|---|---:|---:|---|\n")
	for _, c := range r.Changes {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", mark(c.Direction), cell(c.Identity), cell(c.Resource),
			cell(c.From.String()), cell(c.To.String()), count(c.Requests), count(int64(c.Shapes)), cell(c.Rule))
	}
	fmt.Fprintf(w, "\n<details><summary>Examples</summary>\n\n")
	for _, c := range r.Changes {
		fmt.Fprintf(w, "**%s on %s** (%s → %s)\n\n```\n", c.Identity, c.Resource, c.From, c.To)
		for _, e := range c.Examples {
			fmt.Fprintln(w, oneLine(e, 200))
		}
		fmt.Fprintf(w, "```\n\n")
	}
	fmt.Fprintf(w, "</details>\n")
	r.writeNotes(w, "> ")
	return nil
}

func (r *Report) writeNotes(w io.Writer, prefix string) {
	var notes []string
	if r.Approximate > 0 {
		notes = append(notes, fmt.Sprintf("%s requests come from recordings made before the token's groups were recorded: their callers were resolved from the groups the gateway had resolved then (approximate if the change is to identities or groups)", count(r.Approximate)))
	}
	keys := make([]string, 0, len(r.Skipped))
	for k := range r.Skipped {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		notes = append(notes, fmt.Sprintf("%s %s were not replayed", count(r.Skipped[k]), k))
	}
	if len(notes) == 0 {
		return
	}
	fmt.Fprintln(w)
	for _, n := range notes {
		fmt.Fprintf(w, "%snote: %s\n", prefix, n)
	}
}

func mark(d Direction) string {
	switch d {
	case Widen:
		return "⚠️ widen"
	case Narrow:
		return "narrow"
	}
	return "changed"
}

func sessions(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(", %s sessions", count(int64(n)))
}

// count writes a number with thousands separators.
func count(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return s
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func plural(n int64, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return count(n) + " " + noun + "s"
}

func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > max {
		return string(r[:max-1]) + "…"
	}
	return s
}

func cell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}
