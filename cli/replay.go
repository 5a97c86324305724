package cli

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/recordstore"
)

func newReplayCmd() *cobra.Command {
	var dataDir, key, format string
	var bucket bucketFlags
	var speed float64
	var idle time.Duration
	var input bool
	cmd := &cobra.Command{
		Use:   "replay SESSION [--format auto|timeline|terminal|asciicast]",
		Short: "Replay a recorded session: a timeline of its requests, or its terminal output",
		Long: `Replay a recorded session. SESSION is a session id from 'gatehouse sessions list' or a
recording's path. Recordings of every format and protocol are read, and the recording's integrity
is verified and shown at the end.

Formats:
  timeline   who connected to what under which bundle revision, then every request (statement,
             command, API call) with the decision, the rules that decided it, what was masked, and
             how it ended (rows, exit status, time, error)
  terminal   plays the session's terminal output (SSH shells and commands) in this terminal, with
             its timing, --speed times faster; idle gaps are cut to --idle-limit
  asciicast  writes the terminal output as asciicast v2 (https://docs.asciinema.org), which
             'asciinema play' plays: gatehouse replay S --format asciicast > s.cast
  auto       terminal for a session with terminal output, timeline otherwise (the default)

The integrity report goes to stdout after a timeline, and to stderr otherwise, so that the
terminal and asciicast outputs stay exactly what was recorded; the recording is also checked
against the ledger beside it (a cut tail, a rewritten event). Exit status 1 when the recording was
altered.

SESSION may also be a recording in a bucket, s3://BUCKET/PREFIX/SESSION: it is downloaded, with the
bucket's ledger, into a temporary directory (see 'gatehouse sessions list' for --endpoint and the
credentials). Pass --key: the default key is the one in --data-dir.`,
		Example: `  gatehouse replay 20261126T101500Z-3-ab12cd34 --data-dir /var/lib/gatehouse
  gatehouse replay s3://audit-recordings/gatehouse/20261126T101500Z-3-ab12cd34 --key recorder.pub
  gatehouse replay 20261126T101500Z-4-0f9e8d7c --speed 4
  gatehouse replay 20261126T101500Z-4-0f9e8d7c --format asciicast > session.cast && asciinema play session.cast`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if speed <= 0 {
				return &exitError{code: exitUsage, err: errors.New("--speed must be above 0")}
			}
			path := sessionPath(dataDir, args[0])
			if recordstore.IsURL(args[0]) {
				bucketURL, session, err := splitSessionURL(args[0])
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				dir, cleanup, err := bucket.download(cmd.Context(), bucketURL, session)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				defer cleanup()
				path = filepath.Join(dir, session+".jsonl")
			}
			evs, err := recorder.ReadEvents(path)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			if format == "auto" {
				format = "timeline"
				if hasFrames(evs) {
					format = "terminal"
				}
			}
			w, report := cmd.OutOrStdout(), cmd.ErrOrStderr()
			switch format {
			case "timeline":
				writeTimeline(w, evs)
				report = w
			case "terminal":
				playTerminal(w, evs, speed, idle)
			case "asciicast":
				if err := writeAsciicast(w, evs, input); err != nil {
					return failed("%w", err)
				}
			default:
				return &exitError{code: exitUsage, err: errors.New("--format must be auto, timeline, terminal or asciicast")}
			}
			return verifyAfterReplay(report, path, dataDir, key)
		},
	}
	dataDirFlag(cmd, &dataDir)
	addBucketFlags(cmd, &bucket)
	cmd.Flags().StringVar(&key, "key", "", "the recorder's public key (default DATA_DIR/recorder.pub)")
	cmd.Flags().StringVar(&format, "format", "auto", "auto, timeline, terminal or asciicast")
	cmd.Flags().Float64Var(&speed, "speed", 1, "terminal: play this many times faster than recorded")
	cmd.Flags().DurationVar(&idle, "idle-limit", 2*time.Second, "terminal: cut pauses longer than this (0: keep them)")
	cmd.Flags().BoolVar(&input, "input", false, "asciicast: include recorded input (exec input, or shell input where recorded) as \"i\" events")
	return cmd
}

// verifyAfterReplay checks the recording, and against the ledger beside
// it, and says what it found.
func verifyAfterReplay(w io.Writer, path, dataDir, key string) error {
	kr, kerr := recorderKeys(dataDir, key)
	if kerr != nil {
		fmt.Fprintf(w, "\nintegrity not checked: %v\n", kerr)
		return nil
	}
	a, err := recorder.AuditFiles([]string{path}, recorder.AuditOptions{Keys: kr})
	if err != nil {
		return failed("%w", err)
	}
	fmt.Fprintln(w)
	writeReport(w, a.Recordings[0])
	if a.Ledger != nil && len(a.Ledger.Problems) > 0 {
		writeLedgerReport(w, a.Ledger)
	}
	if a.Verdict() == recorder.VerdictAltered {
		return silentFailure(errors.New("recording altered"))
	}
	return nil
}

func hasFrames(evs []recorder.Event) bool {
	for _, ev := range evs {
		for _, f := range ev.Frames {
			if f.Stream == "o" {
				return true
			}
		}
	}
	return false
}

// frames are the session's frames of the given streams, in time order.
func frames(evs []recorder.Event, streams string) []recorder.Frame {
	var out []recorder.Frame
	for _, ev := range evs {
		for _, f := range ev.Frames {
			if strings.Contains(streams, f.Stream) {
				out = append(out, f)
			}
		}
	}
	// Frames of one stream are in order; streams of parallel channels
	// interleave by time.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].T < out[j-1].T; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// playTerminal writes the output frames with their timing.
func playTerminal(w io.Writer, evs []recorder.Event, speed float64, idle time.Duration) {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	last := 0.0
	for _, f := range frames(evs, "o") {
		gap := time.Duration((f.T - last) * float64(time.Second))
		if idle > 0 && gap > idle {
			gap = idle
		}
		if d := time.Duration(float64(gap) / speed); d > 0 {
			_ = bw.Flush()
			time.Sleep(d)
		}
		last = f.T
		_, _ = bw.WriteString(f.Data)
	}
}

// writeAsciicast writes asciicast v2: a header, then one [t, "o", data]
// event per line, times relative to the first frame.
func writeAsciicast(w io.Writer, evs []recorder.Event, input bool) error {
	width, height, term := 80, 24, ""
	for _, ev := range evs {
		if recorder.IsRequest(ev.Type) && ev.Kind == "pty" {
			var r struct {
				Term string `json:"term"`
				Cols int    `json:"cols"`
				Rows int    `json:"rows"`
			}
			if json.Unmarshal(ev.Request, &r) == nil && r.Cols > 0 && r.Rows > 0 {
				width, height, term = r.Cols, r.Rows, r.Term
			}
		}
	}
	header := map[string]any{"version": 2, "width": width, "height": height}
	if len(evs) > 0 {
		header["timestamp"] = evs[0].Time.Unix()
		header["title"] = fmt.Sprintf("gatehouse session %s: %s on %s", evs[0].Session, evs[0].Identity, evs[0].Resource)
	}
	if term != "" {
		header["env"] = map[string]string{"TERM": term}
	}
	enc := json.NewEncoder(w)
	if err := enc.Encode(header); err != nil {
		return err
	}
	streams := "o"
	if input {
		streams = "oi"
	}
	fs := frames(evs, streams)
	base := 0.0
	if len(fs) > 0 {
		base = fs[0].T
	}
	for _, f := range fs {
		f.T -= base
		if err := enc.Encode(f); err != nil {
			return err
		}
	}
	return nil
}
