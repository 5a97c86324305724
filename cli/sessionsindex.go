package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/recordstore"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
	"github.com/gatehouse-dev/gatehouse/gateway/sessionindex"
)

// indexList is `sessions list --state`: the session index in the state
// database, which the replicas that upload to a bucket keep, read instead
// of the bucket.
type indexList struct {
	state    string // a secret reference to the DSN
	where    string // "" or s3://BUCKET/PREFIX
	filter   sessionindex.Filter
	limit    int
	asJSON   bool
	progress io.Writer
}

func (l indexList) run(ctx context.Context, w io.Writer) error {
	if !strings.HasPrefix(l.state, "env:") && !strings.HasPrefix(l.state, "file:") {
		// Not repeated: it may be the DSN, password and all.
		return &exitError{code: exitUsage, err: errors.New("--state: want a reference to the DSN, env:NAME or file:/path (a DSN holds a password: keep it out of the command line)")}
	}
	switch l.filter.Status {
	case "", sessionindex.StatusOpen, recorder.StatusOK, recorder.StatusCrashed, recorder.StatusUnsealed, recorder.StatusIncomplete, recorder.StatusAltered:
	default:
		return &exitError{code: exitUsage, err: fmt.Errorf("--status %q: want open, ok, crashed, unsealed, incomplete or altered", l.filter.Status)}
	}
	if l.where != "" {
		if !recordstore.IsURL(l.where) {
			return &exitError{code: exitUsage, err: fmt.Errorf("with --state, the argument is a bucket URL (s3://BUCKET/PREFIX) that narrows the list, not %q", l.where)}
		}
		loc, err := recordstore.ParseURL(l.where)
		if err != nil {
			return &exitError{code: exitUsage, err: err}
		}
		// s3://b/gatehouse covers s3://b/gatehouse/replica-1/ but not
		// s3://b/gatehouse-old/.
		l.filter.Location = loc.String()
	}
	dsn, err := secrets.Resolver{}.Resolve(l.state)
	if err != nil {
		return &exitError{code: exitUsage, err: fmt.Errorf("--state: %w", err)}
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ix, err := sessionindex.OpenReader(ctx, dsn)
	if err != nil {
		return &exitError{code: exitUsage, err: fmt.Errorf("--state %s: %w", l.state, err)}
	}
	defer ix.Close()
	f := l.filter
	if l.limit > 0 {
		f.Limit = l.limit + 1
	}
	rows, err := ix.List(ctx, f)
	if err != nil {
		return err
	}
	if l.limit > 0 && len(rows) > l.limit {
		rows = rows[1:]
		fmt.Fprintf(l.progress, "showing the newest %d sessions; --limit 0 lists all\n", l.limit)
	}
	if l.asJSON {
		if rows == nil {
			rows = []sessionindex.Entry{}
		}
		return writeJSON(w, rows)
	}
	fmt.Fprintf(w, "%-38s %-20s %-20s %-12s %6s  %-8s %s\n", "SESSION", "STARTED", "IDENTITY", "RESOURCE", "EVENTS", "SEALED", "RECORDING")
	for _, r := range rows {
		where := r.Object
		if where == "" {
			where = "(not uploaded yet) " + r.Location
		}
		events := fmt.Sprint(r.Events)
		if r.Status == sessionindex.StatusOpen {
			events = "-"
		}
		fmt.Fprintf(w, "%-38s %-20s %-20s %-12s %6s  %-8s %s\n", r.Session, r.Started.UTC().Format("2006-01-02 15:04:05"),
			r.Identity, r.Resource, events, sealedWord(r.Status), where)
	}
	// The index is what the replicas said, not what the bucket holds now.
	fmt.Fprintln(l.progress, "from the session index (what each replica reported at upload); prove recordings with: gatehouse audit verify s3://...")
	return nil
}

// sealedWord says what the list's SEALED column says for an index status.
func sealedWord(status string) string {
	switch status {
	case recorder.StatusOK:
		return "yes"
	case recorder.StatusCrashed:
		return "crashed"
	case sessionindex.StatusOpen:
		return "open"
	case recorder.StatusUnsealed:
		return "no"
	}
	return status // altered, incomplete: audit verify says more
}
