package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/gateway"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/recordstore"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
)

// writeReport prints one recording's verdict and what explains it.
func writeReport(w io.Writer, rep *recorder.Report) {
	switch rep.State() {
	case recorder.StatusIncomplete:
		fmt.Fprintf(w, "INCOMPLETE %s: %d event(s) intact, but the gateway could not write some\n", rep.Path, rep.Events)
		for _, p := range rep.Problems {
			fmt.Fprintf(w, "         event %d: %s\n", p.Line, p.Message)
		}
	case recorder.StatusMissing:
		fmt.Fprintf(w, "MISSING  %s: %s\n", rep.Path, rep.Problems[0].Message)
	case recorder.StatusUnlisted:
		fmt.Fprintf(w, "UNLISTED %s: %d event(s); %s\n", rep.Path, rep.Events, rep.Problems[0].Message)
	case recorder.StatusAltered:
		fmt.Fprintf(w, "ALTERED  %s: %d event(s), the first %d intact\n", rep.Path, rep.Events, rep.Verified)
		for _, p := range rep.Problems {
			fmt.Fprintf(w, "         event %d: %s: %s\n", p.Line, p.Kind, p.Message)
		}
	case recorder.StatusUnsealed:
		fmt.Fprintf(w, "UNSEALED %s: %d event(s) intact, no seal (its session is open, or the gateway has not started again since it stopped; a crash-sealed recording would say CRASHED)\n", rep.Path, rep.Verified)
	case recorder.StatusCrashed:
		fmt.Fprintf(w, "CRASHED  %s: %d event(s), verified; its session never ended (a crash, a kill or a power loss), and the gateway's next start sealed it\n", rep.Path, rep.Events)
	default:
		fmt.Fprintf(w, "OK       %s: %d event(s), sealed and verified\n", rep.Path, rep.Events)
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "         %s\n", n)
	}
}

func writeLedgerReport(w io.Writer, l *recorder.LedgerReport) {
	if len(l.Problems) == 0 {
		fmt.Fprintf(w, "LEDGER   %s: %d entries, chained and signed; begun %s; %d gateway start(s), %d after a crash; %d recording(s) adopted, %d crash-sealed\n",
			l.Path, l.Entries, l.Began.UTC().Format(time.RFC3339), l.Opens, l.Unclean, l.Adopted, l.CrashSeals)
	} else {
		fmt.Fprintf(w, "LEDGER ALTERED %s: %d entries\n", l.Path, l.Entries)
		for _, p := range l.Problems {
			fmt.Fprintf(w, "         entry %d: %s\n", p.Line, p.Message)
		}
	}
	for _, n := range l.Notes {
		fmt.Fprintf(w, "         %s\n", n)
	}
}

func writeAnchorReport(w io.Writer, a *recorder.AnchorReport) {
	if len(a.Problems) == 0 {
		fmt.Fprintf(w, "ANCHOR   %s: %d entries, each one in the ledger as it is (anchored up to entry %d of %d)\n", a.Source, a.Entries, a.Anchored, a.Local)
	} else {
		fmt.Fprintf(w, "ANCHOR MISMATCH %s: %d entries; the ledger has %d\n", a.Source, a.Entries, a.Local)
		for _, p := range a.Problems {
			fmt.Fprintf(w, "         %s\n", p.Message)
		}
	}
	for _, n := range a.Notes {
		fmt.Fprintf(w, "         %s\n", n)
	}
}

// auditJSON is audit verify --json.
type auditJSON struct {
	*recorder.AuditReport
	Verdict  string `json:"verdict"`
	ExitCode int    `json:"exit_code"`
}

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Verify session recordings, their ledger and its anchor"}
	var dataDir, ledger, anchor, anchorToken string
	var bucket bucketFlags
	var keys []string
	var strict bool
	var isJSON func() (bool, error)
	verify := &cobra.Command{
		Use:   "verify [DIR | s3://BUCKET/PREFIX | SESSION|FILE...] [--anchor FILE|URL|s3://BUCKET/PREFIX]",
		Short: "Check recordings and their ledger for edits, deletions, cut tails and additions",
		Long: `Verify session recordings offline with the recorder's public key.

Each event carries the SHA-256 of the one before it, and a session's end is sealed with the
recorder key's ed25519 signature, so an edited, deleted or reordered event, a torn last line, or a
forged seal is found, with the event where it shows. The directory's ledger (ledger.jsonl) chains
every session's start, checkpoints of its head (every checkpoint_interval) and seal, signed with
the same key, so an audit of the directory also finds:

  MISSING   a recording the ledger names that is not there (deleted or moved)
  ALTERED   a recording whose events stop below the last head the ledger holds for it (a cut
            tail, at a line boundary or not), or do not hash to it (rewritten)
  UNLISTED  a recording the ledger does not name (added, or copied from elsewhere)
  LEDGER    a gap, a broken link, an entry that does not parse or whose signature does not
            verify, or no ledger beside recordings written under one (format 3)

A session the gateway could not end (a crash, a kill, a power loss) is sealed at the gateway's next
start with a seal of its own kind: CRASHED, which verifies; the ledger records the last event a
checkpoint held. UNSEALED therefore means a session that is still open, a gateway that has not
started since it stopped, or tampering.

With --anchor, the ledger is compared with the anchor's copy (a file; the anchor's URL, read with
GET; or an s3:// anchor's objects, every version of each, so an entry replaced or hidden behind a
delete marker still counts): every entry the anchor holds must be in the ledger byte for byte, and the ledger must not
end before it. This is what catches a rewrite of a recording and the ledger re-signed with the
recorder key (which the default key in the data directory allows): without an anchor, that rewrite
verifies. Keys read from the data directory (the default) are only as trustworthy as it is: pass
--key with a copy of the public key kept elsewhere.

With no argument, DATA_DIR/recordings is audited. A directory is audited whole; recordings (session
ids or files) are checked against the ledger beside them (or --ledger), without the search for
missing or unlisted recordings.

A bucket the gateway uploads recordings to (s3://BUCKET/PREFIX, its recorder.bucket block) is
downloaded, recordings and ledger, into a temporary directory and audited whole, as a directory;
--endpoint (or $GATEHOUSE_S3_ENDPOINT) names an S3-compatible store other than AWS S3, and the
credentials come from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY. A recording the bucket's
ledger names as started but not sealed, and the bucket lacks, belongs to a session that was open
when the ledger was uploaded: it is UNSEALED, not MISSING. Pass --key with the recorder's public key.

Exit status:
  0  every recording verified or crash-sealed; the ledger (and the anchor) agree
  1  evidence of tampering: ALTERED, MISSING, UNLISTED, LEDGER ALTERED, ANCHOR MISMATCH
     (and, with --strict, UNSEALED or INCOMPLETE)
  2  the check could not run (no key, an unreadable directory or anchor)
  3  nothing altered, but a recording is UNSEALED or INCOMPLETE (a gap the gateway recorded)`,
		Example: `  gatehouse audit verify --data-dir /var/lib/gatehouse
  gatehouse audit verify --data-dir /var/lib/gatehouse --key /secure/recorder.pub --anchor https://anchor.internal/v1/gatehouse/ledger
  gatehouse audit verify /backups/recordings --key recorder.pub --anchor /mnt/worm/gatehouse/ledger.jsonl --strict
  gatehouse audit verify 20261126T101500Z-3-ab12cd34 --data-dir /var/lib/gatehouse
  gatehouse audit verify s3://audit-recordings/gatehouse --endpoint https://s3.internal:9000 --key recorder.pub
  gatehouse audit verify s3://audit-recordings/gatehouse/replica-1 --anchor s3://audit-anchors/gatehouse/replica-1 --key recorder.pub`,
		RunE: func(cmd *cobra.Command, args []string) error {
			kr, err := recorderKeys(dataDir, keys...)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			opts := recorder.AuditOptions{Keys: kr, Ledger: ledger}
			if anchor != "" {
				var token string
				if anchorToken != "" {
					if token, err = (secrets.Resolver{}).Resolve(anchorToken); err != nil {
						return &exitError{code: exitUsage, err: err}
					}
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
				if recordstore.IsURL(anchor) {
					var st *recordstore.Store
					if st, err = bucket.open(anchor); err == nil {
						opts.Anchor, err = recordstore.ReadAnchor(ctx, st)
					}
					if err == nil && len(opts.Anchor) == 0 {
						// A mistyped prefix, or an anchor never written:
						// comparing with nothing would prove nothing.
						err = fmt.Errorf("the anchor %s holds no ledger entries: is the prefix the gateway's recorder.anchor, and has it written there (gatehouse gateway --check)?", anchor)
					}
				} else {
					opts.Anchor, err = recorder.ReadAnchor(ctx, anchor, nil, token)
				}
				cancel()
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				opts.AnchorSource = anchor
			}
			var rep *recorder.AuditReport
			if len(args) > 0 && recordstore.IsURL(args[0]) {
				if len(args) > 1 {
					return &exitError{code: exitUsage, err: errors.New("audit verify takes one bucket URL")}
				}
				dir, cleanup, derr := bucket.download(cmd.Context(), args[0])
				if derr != nil {
					return &exitError{code: exitUsage, err: derr}
				}
				defer cleanup()
				if rep, err = recorder.Audit(dir, opts); err == nil {
					relocate(rep, dir, args[0])
				}
			} else {
				rep, err = runAudit(dataDir, args, opts)
			}
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			code := exitOK
			switch rep.Verdict() {
			case recorder.VerdictAltered:
				code = exitFailure
			case recorder.VerdictUnsealed:
				code = exitUnsealed
				if strict {
					code = exitFailure
				}
			}
			w := cmd.OutOrStdout()
			if asJSON, err := isJSON(); err != nil {
				return err
			} else if asJSON {
				verdict := map[int]string{exitOK: "ok", exitFailure: "altered", exitUnsealed: "unsealed"}[code]
				if code == exitFailure && rep.Verdict() == recorder.VerdictUnsealed {
					verdict = "unsealed"
				}
				if err := writeJSON(w, auditJSON{rep, verdict, code}); err != nil {
					return err
				}
			} else {
				writeAudit(w, rep, strict)
			}
			if code != exitOK {
				return &exitError{code: code, err: errors.New("audit verify found problems"), silent: true}
			}
			return nil
		},
	}
	dataDirFlag(verify, &dataDir)
	addBucketFlags(verify, &bucket)
	verify.Flags().StringArrayVar(&keys, "key", nil, "a recorder public key to trust (repeat for several; default DATA_DIR/recorder.pub and DATA_DIR/recorder-*.pub)")
	verify.Flags().BoolVar(&strict, "strict", false, "exit 1, not 3, for unsealed or incomplete recordings")
	isJSON = jsonFormat(verify.Flags())
	verify.Flags().StringVar(&ledger, "ledger", "", "the ledger to check against (default: ledger.jsonl beside the recordings)")
	verify.Flags().StringVar(&anchor, "anchor", "", "the ledger's anchor: a file, or an http(s) URL answered with GET")
	verify.Flags().StringVar(&anchorToken, "anchor-token", "", "a bearer token for an http(s) anchor, as env:NAME or file:/path")
	cmd.AddCommand(verify)
	return cmd
}

// runAudit audits a directory (the default one, or the one argument), or
// the recordings the arguments name.
func runAudit(dataDir string, args []string, opts recorder.AuditOptions) (*recorder.AuditReport, error) {
	if len(args) == 0 {
		return recorder.Audit(gateway.RecordingsDir(dataDir), opts)
	}
	if fi, err := os.Stat(args[0]); err == nil && fi.IsDir() {
		if len(args) > 1 {
			return nil, errors.New("audit verify takes one directory, or recordings (session ids or files), not both")
		}
		return recorder.Audit(args[0], opts)
	}
	var paths []string
	for _, a := range args {
		p := sessionPath(dataDir, a)
		if fi, err := os.Stat(p); err != nil {
			return nil, err
		} else if fi.IsDir() {
			return nil, errors.New("audit verify takes one directory, or recordings (session ids or files), not both")
		}
		paths = append(paths, filepath.Clean(p))
	}
	return recorder.AuditFiles(paths, opts)
}

func writeAudit(w io.Writer, rep *recorder.AuditReport, strict bool) {
	bad, unsealed, crashed := 0, 0, 0
	for _, r := range rep.Recordings {
		writeReport(w, r)
		switch r.Status {
		case recorder.StatusAltered, recorder.StatusMissing, recorder.StatusUnlisted:
			bad++
		case recorder.StatusUnsealed, recorder.StatusIncomplete:
			if strict {
				bad++
			} else {
				unsealed++
			}
		case recorder.StatusCrashed:
			crashed++
		}
	}
	if rep.Ledger != nil {
		writeLedgerReport(w, rep.Ledger)
	}
	if rep.Anchor != nil {
		writeAnchorReport(w, rep.Anchor)
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	var extra []string
	if unsealed > 0 {
		extra = append(extra, fmt.Sprintf("%d unsealed or incomplete", unsealed))
	}
	if crashed > 0 {
		extra = append(extra, fmt.Sprintf("%d crash-sealed", crashed))
	}
	summary := fmt.Sprintf("%d recording(s) checked, %d with problems", len(rep.Recordings), bad)
	if len(extra) > 0 {
		summary += ", " + strings.Join(extra, ", ")
	}
	fmt.Fprintln(w, summary)
}
