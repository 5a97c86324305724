package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/gatehouse-dev/gatehouse/devenv"
	"github.com/gatehouse-dev/gatehouse/gateway"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

func newDevCmd() *cobra.Command {
	var listen, sshListen, kubeListen, logFile string
	var seeds []string
	var exit, noScript, verbose bool
	var keep string
	cmd := &cobra.Command{
		Use:   "dev [DIR]",
		Short: "Run a throwaway gateway, database and DEVELOPMENT issuer on this machine, and show them working",
		Long: `Start everything a gateway needs on this machine, on loopback, in a temp dir:

  - a private PostgreSQL (the system's binaries), seeded with sample rows;
  - for each ssh_host, a private OpenSSH sshd (the system's binary), logged in to with a key made
    for the run, its host key pinned in the bundle;
  - for the kubernetes_cluster resources, one private kube-apiserver and etcd, with kwok for pods,
    when their binaries are built (make kube-binaries: about 10 minutes, once; without them the
    clusters are skipped, with how to build them);
  - a DEVELOPMENT-ONLY OIDC issuer that signs a token for anyone on this machine who asks
    (its URLs say DEV-ONLY-NOT-FOR-PRODUCTION, and it never listens beyond loopback);
  - the real gateway, enforcing the policy as a bundle signed with a key made for this run.

The policy is DIR, or without DIR the quickstart built into the binary (examples/quickstart).
Every identity provider in it is pointed at the development issuer and every postgres resource at
the private database (verify-full TLS, with a password only the gateway reads). Tokens for each
identity are written to the temp dir: its subject, or for a match-based identity the subject and
claims of the first policy test that names it.

On the quickstart it then runs a scripted psql session: an allowed SELECT with masked columns, a
denied DROP, a denied DELETE without WHERE, a write held for approval and approved from the CLI;
then ssh through the gateway: uptime allowed, rm -rf ./build denied by rule, a port forward
denied; then kubectl through the gateway: pods listed, Secrets denied to analytics, a Secret read
masked by an operator, a command run in a pod. It checks on the database that nothing denied ran,
and replays and verifies the recordings. Then it prints how to connect your own psql, ssh and
kubectl, and runs until Ctrl-C (or exits
at once with --exit). Everything is removed on exit.

Needs: the PostgreSQL 15 server binaries and psql (apt-get install postgresql-15), and for the
SSH part OpenSSH's server and client (apt-get install openssh-server openssh-client); make demo
installs them.`,
		Example: `  gatehouse dev                         # the quickstart, the scripted session, then wait
  gatehouse dev --exit                  # the scripted session only (what make demo's CI check runs)
  gatehouse dev policies/ --seed orders=schema.sql`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w := cmd.OutOrStdout()
			opts := devenv.Options{Listen: listen, SSHListen: sshListen, KubeListen: kubeListen, Progress: w, Seeds: map[string]string{}}
			if len(args) == 1 {
				opts.PolicyDir = args[0]
			}
			for _, s := range seeds {
				resource, file, ok := strings.Cut(s, "=")
				if !ok || resource == "" || file == "" {
					return fmt.Errorf("--seed %q: want RESOURCE=FILE", s)
				}
				data, err := os.ReadFile(file)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				opts.Seeds[resource] = string(data)
			}
			if verbose {
				opts.Log, opts.LogLevel = cmd.ErrOrStderr(), slog.LevelDebug
			} else if logFile != "" {
				f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				defer f.Close()
				opts.Log = f
			}

			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			p := newPainter(w)
			fmt.Fprintf(w, "%s\n%s\n\nStarting:\n",
				p.paint("1;33", "gatehouse dev: a throwaway environment for trying policies. DEVELOPMENT ONLY:"),
				p.paint("1;33", "its issuer signs a token for anyone on this machine who asks."))
			start := time.Now()
			env, err := devenv.Start(ctx, opts)
			if err != nil {
				return failed("%w", err)
			}
			defer func() {
				if keep != "" {
					if n, err := keepRecordings(env, keep); err != nil {
						fmt.Fprintf(cmd.ErrOrStderr(), "gatehouse dev: --keep-recordings: %v\n", err)
					} else {
						fmt.Fprintf(w, "\nKept %d recordings in %s (gatehouse impact OLD NEW --traffic %s).\n", n, keep, keep)
					}
				}
				if err := env.Close(); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "gatehouse dev: clean-up: %v\n", err)
				} else {
					fmt.Fprintf(w, "\nStopped the gateway, the issuer and PostgreSQL; removed %s.\n", env.Dir)
				}
			}()
			fmt.Fprintf(w, "  ready in %s\n", time.Since(start).Round(time.Millisecond))
			for _, s := range env.Skipped {
				fmt.Fprintf(w, "  not served: %s\n", s)
			}

			if opts.PolicyDir == "" && !noScript {
				if err := runDemoScript(ctx, env, w, p); err != nil {
					return err
				}
			}
			writeConnectHelp(w, env, p)
			if exit {
				return nil
			}
			fmt.Fprintf(w, "\nRunning until Ctrl-C.\n")
			<-ctx.Done()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "", "the gateway's PostgreSQL address, on loopback (default "+devenv.DefaultListen+", or a free port when that is taken)")
	f.StringVar(&sshListen, "ssh-listen", "", "the gateway's SSH address, on loopback (default "+devenv.DefaultSSHListen+", or a free port when that is taken)")
	f.StringVar(&kubeListen, "kube-listen", "", "the gateway's Kubernetes API address, on loopback (default "+devenv.DefaultKubeListen+", or a free port when that is taken)")
	f.StringArrayVar(&seeds, "seed", nil, "RESOURCE=FILE: SQL run on the resource's database at start, as its upstream role (repeatable)")
	f.BoolVar(&exit, "exit", false, "exit after the scripted session instead of waiting for Ctrl-C")
	f.BoolVar(&noScript, "no-script", false, "skip the scripted psql session")
	f.BoolVarP(&verbose, "verbose", "v", false, "print the gateway's debug log to stderr")
	f.StringVar(&logFile, "log-file", "", "write the gateway's log to this file (default: gateway.log in the temp dir)")
	f.StringVar(&keep, "keep-recordings", "", "on exit, copy the session recordings (and the recorder's public key) to this directory, for replay, audit or gatehouse impact")
	return cmd
}

// keepRecordings copies the recordings directory's files to dir.
func keepRecordings(env *devenv.Env, dir string) (int, error) {
	src := gateway.RecordingsDir(env.DataDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	files, err := filepath.Glob(filepath.Join(src, "*.jsonl"))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return n, err
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o600); err != nil {
			return n, err
		}
		if filepath.Base(f) != recorder.LedgerName {
			n++
		}
	}
	if pub, err := os.ReadFile(recorder.PublicKeyPath(filepath.Join(env.DataDir, "recorder.key"))); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "recorder.key.pub"), pub, 0o644)
	}
	return n, nil
}

// runDemoScript is the scripted session, the database check, and the replay
// and verification of what was recorded.
func runDemoScript(ctx context.Context, env *devenv.Env, w io.Writer, p painter) error {
	fmt.Fprintf(w, "\n%s\n", p.paint("1", "== A scripted psql session through the gateway =="))
	results, err := env.RunScript(ctx, devenv.QuickstartScript, w, p.color)
	if err != nil {
		return failed("%w", err)
	}
	fmt.Fprintf(w, "\n%s\n", p.paint("1", "== A statement held for approval, approved from the CLI =="))
	self, err := os.Executable()
	if err != nil {
		return failed("%w", err)
	}
	approvalID, approvalErr := env.RunApprovalDemo(ctx, devenv.QuickstartApproval, self, w, p.color)
	if approvalErr != nil {
		fmt.Fprintf(w, "   %s\n", p.paint("31", "!! not what the demo expects: "+approvalErr.Error()))
	}
	sshRan, sshErr := runSSHDemo(ctx, env, self, w, p)
	kubeRan, kubeErr := runKubeDemo(ctx, env, self, w, p)

	fmt.Fprintf(w, "\n%s\n", p.paint("1", "== What reached the database (asked directly, around the gateway) =="))
	checkErr := env.RunChecks(ctx, devenv.QuickstartChecks, w)

	fmt.Fprintf(w, "\n%s\n", p.paint("1", "== The recordings =="))
	sessions, err := env.WaitSealed(ctx, 10*time.Second)
	if err != nil {
		return failed("%w", err)
	}
	kr, err := recorderKeys(env.DataDir, "")
	if err != nil {
		return failed("%w", err)
	}
	bad := 0
	approvalReplayed, sshReplayed, kubeReplayed := false, false, false
	kubeSessions := 0
	for i, s := range sessions {
		path := filepath.Join(gateway.RecordingsDir(env.DataDir), s.Session+".jsonl")
		evs, err := recorder.ReadEvents(path)
		if err != nil {
			return failed("%w", err)
		}
		isSSH := len(evs) > 0 && evs[0].Protocol == "ssh"
		isKube := len(evs) > 0 && evs[0].Protocol == "kubernetes"
		if isKube {
			kubeSessions++
			if !kubeReplayed && hasFrames(evs) {
				kubeReplayed = true
				fmt.Fprintf(w, "\n$ gatehouse replay %s --data-dir %s --format timeline    # a kubectl session\n\n", s.Session, env.DataDir)
				writeTimeline(w, evs)
				fmt.Fprintf(w, "\n$ gatehouse replay %s --data-dir %s    # the exec's output, as it came\n", s.Session, env.DataDir)
				playTerminal(w, evs, 100, 0)
			}
		}
		if i == 0 || (approvalID != "" && holdsApproval(evs, approvalID)) || (isSSH && !sshReplayed) {
			fmt.Fprintf(w, "\n$ gatehouse replay %s --data-dir %s --format timeline\n\n", s.Session, env.DataDir)
			writeTimeline(w, evs)
		}
		if isSSH && !sshReplayed {
			sshReplayed = true
			fmt.Fprintf(w, "\n$ gatehouse replay %s --data-dir %s    # its terminal output, as it came\n", s.Session, env.DataDir)
			playTerminal(w, evs, 100, 0)
		}
		if i == 0 {
			if missing := missingEvents(evs); missing != "" {
				return failed("the first session's recording lacks %s", missing)
			}
		} else if approvalID != "" && holdsApproval(evs, approvalID) {
			if missing := missingApprovalEvents(evs, approvalID); missing != "" {
				return failed("the approval session's recording: %s", missing)
			}
			approvalReplayed = true
		}
	}
	fmt.Fprintf(w, "\n$ gatehouse audit verify --data-dir %s\n", env.DataDir)
	for _, s := range sessions {
		path := filepath.Join(gateway.RecordingsDir(env.DataDir), s.Session+".jsonl")
		rep, err := recorder.Verify(path, kr)
		if err != nil {
			return failed("%w", err)
		}
		writeReport(w, rep)
		if !rep.OK() {
			bad++
		}
	}

	if err := devenv.Failed(results); err != nil {
		return failed("the scripted session did not go as expected:\n%w", err)
	}
	if approvalErr != nil {
		return failed("the approval did not go as expected: %w", approvalErr)
	}
	if !approvalReplayed {
		return failed("no recording holds approval %s", approvalID)
	}
	if checkErr != nil {
		return failed("the database does not look as the script expects:\n%w", checkErr)
	}
	if sshErr != nil {
		return failed("%w", sshErr)
	}
	if kubeErr != nil {
		return failed("%w", kubeErr)
	}
	if bad > 0 {
		return failed("%d recording(s) did not verify", bad)
	}
	want := len(devenv.QuickstartScript) + 1
	if sshRan {
		// Each ssh command is a connection of its own: a session each.
		want += len(devenv.QuickstartSSH)
		if !sshReplayed {
			return failed("no recording of the SSH session")
		}
	}
	if kubeRan {
		// A Kubernetes session is one token on one cluster: one per
		// caller, or more when a caller was idle past the idle timeout.
		if kubeSessions == 0 || !kubeReplayed {
			return failed("no recording of the kubectl exec")
		}
		want += kubeSessions
	}
	if len(sessions) != want {
		return failed("%d recording(s), want one per scripted session (%d)", len(sessions), want)
	}
	summary := fmt.Sprintf("All %d statements went as scripted, one held and approved", len(results)+1)
	if sshRan {
		summary += fmt.Sprintf("; %d ssh commands as scripted", len(devenv.QuickstartSSH))
	}
	if kubeRan {
		summary += fmt.Sprintf("; %d kubectl commands as scripted", len(devenv.QuickstartKube))
	}
	fmt.Fprintf(w, "\n%s; %d sessions recorded, sealed and verified.\n", summary, len(sessions))
	return nil
}

// runSSHDemo runs the SSH part of the demo when the environment serves an
// SSH host: ssh through the gateway with the token given by a
// gatehouse-askpass link to this binary. ran is false when there is no SSH
// host to show (sshd is not installed).
func runSSHDemo(ctx context.Context, env *devenv.Env, self string, w io.Writer, p painter) (ran bool, err error) {
	if len(env.SSH) == 0 {
		return false, nil
	}
	fmt.Fprintf(w, "\n%s\n", p.paint("1", "== ssh through the gateway: a command per rule =="))
	askpass, err := askpassLink(env.Dir, self)
	if err != nil {
		return true, err
	}
	err = env.RunSSHScript(ctx, env.SSH[0].Name, devenv.QuickstartSSH, askpass, w, p.color)
	if err != nil {
		fmt.Fprintf(w, "   %s\n", p.paint("31", "!! not what the demo expects: "+err.Error()))
	}
	return true, err
}

// runKubeDemo runs the Kubernetes part of the demo when the environment
// serves a cluster; otherwise it says how to get one. ran is false then.
func runKubeDemo(ctx context.Context, env *devenv.Env, self string, w io.Writer, p painter) (ran bool, err error) {
	if env.Kube == nil {
		for _, c := range env.Model.KubernetesClusters {
			fmt.Fprintf(w, "\n%s\n   kubernetes_cluster %q is not served: %s\n", p.paint("1", "== kubectl through the gateway: skipped =="), c.Name, kubeSkipReason(env, c.Name))
			break
		}
		return false, nil
	}
	fmt.Fprintf(w, "\n%s\n", p.paint("1", "== kubectl through the gateway: requests decided per rule, Secrets masked, exec recorded =="))
	err = env.RunKubeScript(ctx, self, devenv.QuickstartKube, w, p.color)
	if err != nil {
		fmt.Fprintf(w, "   %s\n", p.paint("31", "!! "+err.Error()))
	}
	return true, err
}

// kubeSkipReason is why a cluster is not served, from the start-up notes.
func kubeSkipReason(env *devenv.Env, name string) string {
	for _, s := range env.Skipped {
		if strings.Contains(s, fmt.Sprintf("%q", name)) {
			return strings.TrimPrefix(s, fmt.Sprintf("kubernetes_cluster %q ", name))
		}
	}
	return "its binaries are not built"
}

// askpassLink makes dir/bin/gatehouse-askpass, a link to this binary, for
// SSH_ASKPASS (which names a program, not a command line).
func askpassLink(dir, self string) (string, error) {
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", err
	}
	link := filepath.Join(bin, "gatehouse-askpass")
	if _, err := os.Lstat(link); err == nil {
		return link, nil
	}
	return link, os.Symlink(self, link)
}

// missingEvents checks that the scripted billing session's recording holds
// what the script did: denials, masks applied, and results.
func missingEvents(evs []recorder.Event) string {
	var denied, masked, results int
	for _, ev := range evs {
		switch {
		case recorder.IsRequest(ev.Type) && ev.Effect == "deny":
			denied++
		case ev.Type == recorder.TypeMasked:
			masked++
		case ev.Type == recorder.TypeResult:
			results++
		}
	}
	switch {
	case denied != 3:
		return fmt.Sprintf("the three denied statements (it has %d)", denied)
	case masked != 2:
		return fmt.Sprintf("the two masked results (it has %d)", masked)
	case results != 3:
		return fmt.Sprintf("the three statements' results (it has %d)", results)
	}
	return ""
}

func holdsApproval(evs []recorder.Event, id string) bool {
	for _, ev := range evs {
		if ev.Approval == id {
			return true
		}
	}
	return false
}

// missingApprovalEvents checks that the held statement's recording reads
// request, approval, execution, in that order.
func missingApprovalEvents(evs []recorder.Event, id string) string {
	step := 0
	for _, ev := range evs {
		switch {
		case step == 0 && recorder.IsRequest(ev.Type) && ev.Approval == id && ev.Effect == "review":
			step = 1
		case step == 1 && ev.Type == recorder.TypeApproval && ev.Approval == id && ev.State == "approved" && len(ev.Votes) > 0:
			step = 2
		case step == 2 && ev.Type == recorder.TypeResult && ev.Error == "" && ev.Rows == 1:
			step = 3
		}
	}
	return map[int]string{0: "no statement event naming the approval", 1: "no approval event after the statement",
		2: "no result of the approved statement", 3: ""}[step]
}

func writeConnectHelp(w io.Writer, env *devenv.Env, p painter) {
	fmt.Fprintf(w, "\n%s\n", p.paint("1", "== Try it yourself =="))
	fmt.Fprintf(w, "Tokens (valid %s) for the policy's identities are in %s/tokens:\n\n", devenv.TokenTTL, env.Dir)
	for _, c := range env.Callers {
		for _, db := range env.Databases {
			fmt.Fprintf(w, "  PGPASSWORD=$(cat %s) psql \"%s\"\n", c.TokenFile, env.ConnString(db, c.Identity))
		}
	}
	fmt.Fprintf(w, "\nA fresh token, with any subject and claims (DEVELOPMENT ONLY):\n")
	for _, p := range env.Model.IdentityProviders {
		fmt.Fprintf(w, "  curl -s '%s?sub=SUBJECT&CLAIM=VALUE'\n", env.Issuer.TokenURL(p.Name))
	}
	if len(env.SSH) > 0 && env.SSHCaller != nil {
		if self, err := os.Executable(); err == nil {
			if askpass, err := askpassLink(env.Dir, self); err == nil {
				fmt.Fprintf(w, "\nssh through the gateway as %s (the token is the password; the askpass link answers for you):\n", env.SSHCaller.Identity)
				fmt.Fprintf(w, "  SSH_ASKPASS=%s SSH_ASKPASS_REQUIRE=force GATEHOUSE_TOKEN_FILE=%s \\\n    ssh %s uptime\n",
					askpass, env.SSHCaller.TokenFile, strings.Join(env.SSHArgs(env.SSH[0].Name), " "))
				fmt.Fprintf(w, "  # or paste the token at the password prompt: cat %s\n", env.SSHCaller.TokenFile)
			}
		}
	}
	if env.Kube != nil {
		if self, err := os.Executable(); err == nil {
			certFile, _ := gateway.KubernetesTLSPaths(env.DataDir)
			for _, c := range env.Callers {
				fmt.Fprintf(w, "\nkubectl through the gateway as %s:\n", c.Identity)
				fmt.Fprintf(w, "  %s kubeconfig --resource %s --gateway https://%s --ca %s \\\n    --token-command 'cat %s' --out %s.kubeconfig\n",
					self, env.KubeClusters[0], env.Gateway.Addr("kubernetes"), certFile, c.TokenFile, c.Identity)
				fmt.Fprintf(w, "  KUBECONFIG=%s.kubeconfig kubectl get pods -n web\n", c.Identity)
				break
			}
		}
	}
	if len(env.Approvers) > 0 {
		fmt.Fprintf(w, "\nApprove what review rules hold (DEVELOPMENT ONLY approver tokens):\n")
		for _, a := range env.Approvers {
			fmt.Fprintf(w, "  GATEHOUSE_ADDR=http://%s GATEHOUSE_TOKEN=$(cat %s) gatehouse approvals list   # %s\n", env.Gateway.AdminAddr, a.TokenFile, a.Identity)
		}
	}
	fmt.Fprintf(w, "\nSee what happened:\n")
	fmt.Fprintf(w, "  gatehouse sessions list --data-dir %s\n", env.DataDir)
	fmt.Fprintf(w, "  gatehouse audit verify --data-dir %s\n", env.DataDir)
	fmt.Fprintf(w, "  curl -s http://%s/metrics | grep ^gatehouse_\n", env.Gateway.AdminAddr)
	if env.LogFile != "" {
		fmt.Fprintf(w, "  tail -f %s\n", env.LogFile)
	}
}

// painter colours headings when writing to a terminal and NO_COLOR is unset.
type painter struct{ color bool }

func newPainter(w io.Writer) painter {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("NO_COLOR") != "" {
		return painter{}
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return painter{color: err == nil}
}

func (p painter) paint(code, s string) string { return devenv.Paint(p.color, code, s) }
