package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/recordstore"
	"github.com/gatehouse-dev/gatehouse/gateway/sessionindex"
)

// dataDirFlag is the gateway data directory the recording commands read.
func dataDirFlag(cmd *cobra.Command, dir *string) {
	def := os.Getenv("GATEHOUSE_DATA_DIR")
	if def == "" {
		def = "/var/lib/gatehouse"
	}
	cmd.Flags().StringVar(dir, "data-dir", def, "the gateway's data_dir (default $GATEHOUSE_DATA_DIR or /var/lib/gatehouse)")
}

// sessionPath turns a session id or a file path into a recording's path.
func sessionPath(dataDir, arg string) string {
	if strings.HasSuffix(arg, ".jsonl") || strings.ContainsRune(arg, os.PathSeparator) {
		return arg
	}
	return filepath.Join(gateway.RecordingsDir(dataDir), arg+".jsonl")
}

func newSessionsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "sessions", Short: "List recorded gateway sessions"}
	var dataDir, identity, resource, since, stateRef, status string
	var limit int
	var bucket bucketFlags
	var isJSON func() (bool, error)
	list := &cobra.Command{
		Use:   "list [DIR | s3://BUCKET/PREFIX] [--state env:DSN_VAR] [--identity NAME] [--resource NAME] [--since 24h|RFC3339]",
		Short: "List recorded sessions, oldest first",
		Long: `List the sessions recorded in the gateway's data directory: when each started, who (the identity,
or the token subject), which resource, how many events, and whether the recording is sealed. A
recording is sealed when its session ended; "crashed" when the gateway stopped while the session
was open and sealed it at its next start; an unsealed one belongs to a session still open (or to a
gateway that has not started again since it stopped). Use 'gatehouse audit verify' to check
integrity.

With an argument, the recordings in that directory are listed, or those uploaded to a bucket
(s3://BUCKET/PREFIX, as the gateway's recorder.bucket block names it), which are downloaded into a
temporary directory first; --endpoint (or $GATEHOUSE_S3_ENDPOINT) names an S3-compatible store other
than AWS S3, and the credentials come from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY.

With --state, the session index in the state database is listed instead, without reading any
recording: every replica whose gateway.hcl has both a state block and a recorder.bucket block writes
a row when a session starts ("open") and again once its recording is uploaded and read back, with
the object's URL and what the replica's verification said of it (yes, crashed, no, altered, ...).
An s3:// argument then narrows the list to the replicas uploading under that URL. The index is a
catalogue, not evidence: 'gatehouse audit verify s3://...' proves the recordings. --state takes a
reference to the DSN (env:NAME or file:/path), never the DSN itself.`,
		Example: `  gatehouse sessions list --data-dir /var/lib/gatehouse --identity billing-service --since 24h
  gatehouse sessions list s3://audit-recordings/gatehouse --endpoint https://s3.internal:9000
  gatehouse sessions list --state env:GATEHOUSE_STATE_DSN --status open
  gatehouse sessions list s3://audit-recordings/gatehouse/replica-1 --state env:GATEHOUSE_STATE_DSN --since 24h`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			from, err := sinceTime(since, time.Now())
			if err != nil {
				return err
			}
			if stateRef != "" {
				asJSON, err := isJSON()
				if err != nil {
					return err
				}
				l := indexList{state: stateRef, limit: limit, asJSON: asJSON, progress: cmd.ErrOrStderr(),
					filter: sessionindex.Filter{Identity: identity, Resource: resource, Since: from, Status: status}}
				if len(args) == 1 {
					l.where = args[0]
				}
				return l.run(cmd.Context(), cmd.OutOrStdout())
			}
			if status != "" || cmd.Flags().Changed("limit") {
				return &exitError{code: exitUsage, err: fmt.Errorf("--status and --limit are for the session index (--state)")}
			}
			dir := gateway.RecordingsDir(dataDir)
			if len(args) == 1 {
				dir = args[0]
			}
			var bucketURL string
			if recordstore.IsURL(dir) {
				var cleanup func()
				bucketURL = dir
				if dir, cleanup, err = bucket.download(cmd.Context(), bucketURL); err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				defer cleanup()
			}
			ss, err := recorder.List(dir)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			if bucketURL != "" {
				loc, _ := recordstore.ParseURL(bucketURL)
				for i := range ss {
					ss[i].Path = loc.String() + filepath.Base(ss[i].Path)
				}
			}
			var out []recorder.Summary
			for _, s := range ss {
				if (identity == "" || s.Identity == identity) && (resource == "" || s.Resource == resource) && !s.Started.Before(from) {
					out = append(out, s)
				}
			}
			if asJSON, err := isJSON(); err != nil {
				return err
			} else if asJSON {
				if out == nil {
					out = []recorder.Summary{}
				}
				return writeJSON(cmd.OutOrStdout(), out)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%-38s %-20s %-20s %-12s %6s  %s\n", "SESSION", "STARTED", "IDENTITY", "RESOURCE", "EVENTS", "SEALED")
			for _, s := range out {
				sealed := "yes"
				switch {
				case !s.Sealed:
					sealed = "no"
				case s.Crashed:
					sealed = "crashed"
				}
				fmt.Fprintf(w, "%-38s %-20s %-20s %-12s %6d  %s\n", flat(s.Session), s.Started.UTC().Format("2006-01-02 15:04:05"), flat(s.Identity), flat(s.Resource), s.Events, sealed)
			}
			return nil
		},
	}
	dataDirFlag(list, &dataDir)
	addBucketFlags(list, &bucket)
	list.Flags().StringVar(&identity, "identity", "", "only sessions of this identity")
	list.Flags().StringVar(&resource, "resource", "", "only sessions to this resource")
	list.Flags().StringVar(&stateRef, "state", "", "list the session index in the state database: a reference to its DSN, env:NAME or file:/path (as gateway.hcl's state.postgres)")
	list.Flags().StringVar(&status, "status", "", "with --state: only sessions of this status: open, ok, crashed, unsealed, incomplete or altered")
	list.Flags().IntVar(&limit, "limit", 1000, "with --state: at most this many sessions, the newest (0: all)")
	list.Flags().StringVar(&since, "since", "", "only sessions started since: 14d, 24h, 90m before now, or an RFC 3339 time")
	isJSON = jsonFormat(list.Flags())
	cmd.AddCommand(list)
	return cmd
}

// recorderKeys loads the recorder keys to trust: the files given, or by
// default DATA_DIR/recorder.pub and the earlier keys the gateway kept
// beside it (recorder-KEYID.pub) when its key changed. Keys read from the
// data directory are only as trustworthy as it is: an auditor of a host
// they do not trust passes --key with a copy kept elsewhere.
func recorderKeys(dataDir string, keys ...string) (bundle.Keyring, error) {
	var paths []string
	for _, k := range keys {
		if k != "" {
			paths = append(paths, k)
		}
	}
	if len(paths) == 0 {
		paths = append(paths, recorder.PublicKeyPath(gateway.RecorderKeyPath(dataDir)))
		old, _ := filepath.Glob(filepath.Join(dataDir, "recorder-*.pub"))
		paths = append(paths, old...)
	}
	return bundle.LoadKeyring(paths...)
}

// writeTimeline prints a recording for people. Every recorded string goes
// through flat: a recording holds what callers, tokens and servers sent
// (an error message quotes the caller's SQL), and an escape sequence
// printed as it is would act on the auditor's terminal, a line break
// would print a timeline line the recording does not hold.
func writeTimeline(w io.Writer, evs []recorder.Event) {
	pr := flat
	for _, ev := range evs {
		ts := ev.Time.UTC().Format("15:04:05.000")
		switch ev.Type {
		case recorder.TypeStart:
			who := ev.Identity
			proto := ev.Protocol
			if proto == "" {
				proto = "postgres" // format 1 recorded PostgreSQL sessions only
			}
			fmt.Fprintf(w, "session %s (%s)\n  %s (subject %q, issuer %s, groups [%s]) on %q\n  bundle revision %d (%s), from %s\n\n",
				pr(ev.Session), proto, pr(who), ev.Subject, pr(ev.Issuer), pr(strings.Join(ev.Groups, ", ")), pr(ev.Resource), ev.BundleRevision, pr(ev.BundleDigest), pr(ev.ClientAddr))
			fmt.Fprintf(w, "%s  start\n", ts)
		case recorder.TypeRequest, recorder.TypeStatement:
			var d celpolicy.Decision
			_ = json.Unmarshal(ev.Decision, &d)
			text := strings.Join(strings.Fields(approval.Printable(ev.Display())), " ")
			if len(text) > 200 {
				text = text[:200] + "..."
			}
			fmt.Fprintf(w, "%s  %-6s %s", ts, pr(strings.ToUpper(ev.Effect)), text)
			if len(ev.Rules) > 0 {
				fmt.Fprintf(w, "   [%s]", pr(strings.Join(ev.Rules, ", ")))
			}
			fmt.Fprintln(w)
			if len(ev.Params) > 0 {
				fmt.Fprintf(w, "%14s parameters: %s\n", "", pr(strings.Join(ev.Params, ", ")))
			}
			if ev.Approval != "" {
				fmt.Fprintf(w, "%14s approval request %s (%s)\n", "", pr(ev.Approval), pr(ev.ApprovalHash))
			}
			if bundle.Effect(ev.Effect) != bundle.EffectAllow && len(d.Reasons) > 0 {
				fmt.Fprintf(w, "%14s reason: %s\n", "", pr(strings.Join(d.Reasons, "; ")))
			}
		case recorder.TypeMasked:
			fmt.Fprintf(w, "%14s masked: %s\n", "", pr(strings.Join(ev.MaskedFields(), ", ")))
		case recorder.TypeOutput:
			n := 0
			for _, f := range ev.Frames {
				n += len(f.Data)
			}
			fmt.Fprintf(w, "%14s output: %d byte(s) in %d frame(s)\n", "", n, len(ev.Frames))
		case recorder.TypeServer:
			if ev.Kind == "notification" {
				fmt.Fprintf(w, "%s  NOTIFY %s: %s\n", ts, pr(ev.Channel), pr(ev.Text))
			} else {
				fmt.Fprintf(w, "%s  SERVER %s\n", ts, pr(ev.Text))
			}
		case recorder.TypeRecheck:
			fmt.Fprintf(w, "%s  RECHK  judged again by bundle revision %d (%s): %s\n", ts, ev.BundleRevision, pr(ev.BundleDigest), pr(ev.Identity))
		case recorder.TypeApproval:
			fmt.Fprintf(w, "%s  %-6s %s %s", ts, "APPROV", pr(ev.Approval), pr(strings.ToUpper(ev.State)))
			if ev.Reason != "" {
				fmt.Fprintf(w, ": %s", pr(ev.Reason))
			}
			fmt.Fprintln(w)
			for _, v := range ev.Votes {
				fmt.Fprintf(w, "%14s %s %s by %s", "", v.Time.UTC().Format("15:04:05.000"), pr(v.Decision), pr(v.Approver))
				if v.Comment != "" {
					fmt.Fprintf(w, ": %q", v.Comment)
				}
				fmt.Fprintln(w)
			}
		case recorder.TypeResult:
			switch {
			case ev.Error != "":
				fmt.Fprintf(w, "%14s -> error %s (%.1f ms)\n", "", pr(ev.Error), ev.DurationMS)
			case ev.ExitCode != nil:
				fmt.Fprintf(w, "%14s -> exit status %d in %.1f ms\n", "", *ev.ExitCode, ev.DurationMS)
			case ev.Status != 0:
				fmt.Fprintf(w, "%14s -> HTTP %d in %.1f ms\n", "", ev.Status, ev.DurationMS)
			default:
				fmt.Fprintf(w, "%14s -> %d row(s) in %.1f ms\n", "", ev.Rows, ev.DurationMS)
			}
		case recorder.TypeEnd:
			fmt.Fprintf(w, "%s  end    %s\n", ts, pr(ev.Reason))
		case recorder.TypeSeal:
			if ev.Kind == recorder.SealCrashed {
				fmt.Fprintf(w, "%s  CRASH  %s\n%14s sealed at the gateway's next start by recorder key %s\n", ts, pr(ev.Reason), "", pr(shortID(ev.KeyID)))
				break
			}
			fmt.Fprintf(w, "%14s sealed by recorder key %s\n", "", pr(shortID(ev.KeyID)))
		case recorder.TypeGap:
			fmt.Fprintf(w, "%s  GAP    %d event(s) could not be written: %s\n", ts, ev.Lost, pr(ev.Reason))
		}
	}
}

// flat is a recorded string for one line of a listing: approval.Printable,
// with the line breaks and tabs it keeps escaped too.
func flat(s string) string {
	return flatBreaks.Replace(approval.Printable(s))
}

var flatBreaks = strings.NewReplacer("\n", `\u{000A}`, "\t", `\u{0009}`)

// sinceTime reads a --since flag: a number of days (14d), a duration
// (36h, 90m) before now, or an RFC 3339 time. Empty is the zero time
// (everything).
func sinceTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n > 0 {
			return now.Add(-time.Duration(n) * 24 * time.Hour), nil
		}
	} else if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d), nil
	} else if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, &exitError{code: exitUsage, err: fmt.Errorf("--since %q: want days (14d), a duration (36h, 90m) or an RFC 3339 time", s)}
}
