package cli

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

func newBundleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Build, verify, inspect and diff signed policy bundles",
		Long: `A bundle is a policy directory compiled into canonical JSON and signed with ed25519 inside a
DSSE envelope. Gateways load only bundles signed by a key they trust, and only move to higher
revisions. The same directory, SOURCE_DATE_EPOCH and --revision always give the same bytes.`,
	}
	cmd.AddCommand(newBundleBuildCmd(), newBundleVerifyCmd(), newBundleInspectCmd(), newBundleDiffCmd())
	return cmd
}

func newBundleBuildCmd() *cobra.Command {
	var key, out string
	var revision uint64
	var skipTests bool
	cmd := &cobra.Command{
		Use:   "build DIR --key KEY --out FILE [--revision N]",
		Short: "Compile a policy directory into a signed bundle",
		Long: `Compile every *.hcl file in DIR, type-check all CEL, run the policy tests, and write a signed
bundle to FILE.

The build refuses to sign when the policy has errors or a test fails (--skip-tests to sign anyway).

Reproducible: created_at is $SOURCE_DATE_EPOCH when set (else now), and the revision is
--revision when given (else created_at in Unix seconds, so later builds have higher revisions).
Two builds of the same directory with the same SOURCE_DATE_EPOCH and --revision are
byte-identical.

The file is written atomically (temporary file, then rename), so a gateway watching FILE never
reads half a bundle.`,
		Example: `  gatehouse bundle build examples/quickstart --key keys/gatehouse.key --out quickstart.bundle
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) gatehouse bundle build policies/ --key $KEY --out policy.bundle --revision 42`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if key == "" || out == "" {
				return errors.New("--key and --out are required")
			}
			stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
			priv, err := bundle.LoadPrivateKey(key)
			if errors.Is(err, fs.ErrNotExist) {
				return &exitError{code: exitUsage, err: err}
			}
			if err != nil {
				return failed("%w", err)
			}
			start := time.Now()
			res, diags := hclconfig.Load(args[0])
			if diags.HasErrors() {
				_ = hclconfig.WriteDiagnostics(stderr, res.Files, diags)
				return failed("%d error(s) in the policy; not signing", len(diags.Errs()))
			}
			fmt.Fprintf(stderr, "compiled %s: %d rule(s), %d resource(s), %d test(s) in %s\n",
				args[0], res.Policy.RuleCount(), len(res.Model.Resources()), len(res.Model.Tests), time.Since(start).Round(time.Millisecond))
			if !skipTests && len(res.Model.Tests) > 0 {
				results := res.Policy.RunTests()
				if failedN := countFailed(results); failedN > 0 {
					writeTextResults(stderr, results, false)
					return failed("%d of %d policy test(s) failed; not signing (fix the policy or the tests, or pass --skip-tests)", failedN, len(results))
				}
				fmt.Fprintf(stderr, "tests: %d passed\n", len(results))
			}
			payload, err := bundle.NewPayload(*res.Model, bundle.BuildOptions{Revision: revision, Compiler: compilerID()})
			if err != nil {
				return failed("%w", err)
			}
			raw, err := bundle.EncodePayload(payload)
			if err != nil {
				return failed("%w", err)
			}
			file, err := bundle.Sign(raw, priv)
			if err != nil {
				return failed("%w", err)
			}
			if err := bundle.WriteFileAtomic(out, file, 0o644); err != nil {
				return failed("write bundle: %v", err)
			}
			fmt.Fprintf(stdout, "wrote %s: revision %d, %s, signed by key %s\n", out, payload.Revision, bundle.Digest(raw), shortID(bundle.KeyID(priv.Public().(ed25519.PublicKey))))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&key, "key", "", "private signing key (PKCS#8 PEM, from gatehouse keygen); must be mode 0600")
	f.StringVar(&out, "out", "", "bundle file to write")
	f.Uint64Var(&revision, "revision", 0, "bundle revision (default: created_at as Unix seconds); gateways only accept higher revisions")
	f.BoolVar(&skipTests, "skip-tests", false, "sign even if policy tests fail")
	return cmd
}

func shortID(id string) string {
	if len(id) > 16 {
		return id[:16]
	}
	return id
}

func newBundleVerifyCmd() *cobra.Command {
	var trust []string
	var minRevision uint64
	cmd := &cobra.Command{
		Use:   "verify FILE --trust PUB [--trust PUB2 ...] [--min-revision N]",
		Short: "Verify a bundle's signature, encoding, schema, revision and CEL",
		Long: `Verify FILE exactly as a gateway does before loading it:

  - it is a DSSE envelope, byte for byte as 'gatehouse bundle build' writes it (any edit fails);
  - its one signature is by one of the --trust keys and verifies over the payload;
  - the payload has a schema version this gatehouse understands, and is in canonical form;
  - its revision is strictly greater than --min-revision (the revision currently active), which
    refuses rollbacks to older signed bundles;
  - all of its CEL compiles.

Exit status 0 when all hold; 1 with the reason otherwise.`,
		Example: `  gatehouse bundle verify policy.bundle --trust keys/gatehouse.pub
  gatehouse bundle verify policy.bundle --trust old.pub --trust new.pub --min-revision 1732550400`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(trust) == 0 {
				return errors.New("at least one --trust PUB is required")
			}
			kr, err := bundle.LoadKeyring(trust...)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			if fi, err := os.Stat(args[0]); err != nil || fi.IsDir() {
				if err == nil {
					err = fmt.Errorf("%s is a directory; verify takes a bundle file (build one with gatehouse bundle build)", args[0])
				}
				return &exitError{code: exitUsage, err: err}
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return failed("%w", err)
			}
			v, err := bundle.Verify(data, kr, bundle.VerifyOptions{ActiveRevision: minRevision})
			if err != nil {
				return failed("%s: %w", args[0], err)
			}
			pol, err := celpolicy.FromPayload(v.Payload, sqlfacts.Analysis())
			if err != nil {
				return failed("%s: signature is valid but the policy does not compile: %v", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "OK %s: revision %d, created %s, %d rule(s), signed by key %s, %s\n",
				args[0], v.Payload.Revision, v.Payload.CreatedAt, pol.RuleCount(), shortID(v.KeyID), v.Digest)
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&trust, "trust", nil, "trusted public key (PKIX PEM); repeat for several (key rotation)")
	cmd.Flags().Uint64Var(&minRevision, "min-revision", 0, "the active revision: the bundle's revision must be strictly greater")
	return cmd
}

func newBundleInspectCmd() *cobra.Command {
	var isJSON func() (bool, error)
	var trust []string
	cmd := &cobra.Command{
		Use:   "inspect FILE [--json]",
		Short: "Show what a bundle contains",
		Long: `Show a bundle's metadata and contents. Without --trust the signature is not checked, and the
output says so; use 'gatehouse bundle verify' before trusting anything you see.`,
		Example: `  gatehouse bundle inspect policy.bundle
  gatehouse bundle inspect policy.bundle --trust keys/gatehouse.pub --json | jq .payload.revision`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := loadSource(args[0], trust, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if src.payload == nil {
				return &exitError{code: exitUsage, err: fmt.Errorf("%s is a directory; inspect takes a bundle file", args[0])}
			}
			if asJSON, err := isJSON(); err != nil {
				return err
			} else if asJSON {
				return writeJSON(cmd.OutOrStdout(), map[string]any{
					"file": args[0], "verified": src.verified, "key_id": src.keyID, "digest": src.digest,
					"payload": src.payload,
				})
			}
			writeInspect(cmd.OutOrStdout(), src)
			return nil
		},
	}
	isJSON = jsonFormat(cmd.Flags())
	cmd.Flags().StringArrayVar(&trust, "trust", nil, "verify the signature against this public key first")
	return cmd
}

func writeInspect(w io.Writer, src *source) {
	p := src.payload
	m := &p.Model
	sig := "NOT VERIFIED"
	if src.verified {
		sig = "verified"
	}
	fmt.Fprintf(w, "bundle      %s\n", src.path)
	fmt.Fprintf(w, "revision    %d\ncreated_at  %s\ncompiler    %s\nschema      %d\n", p.Revision, p.CreatedAt, p.Compiler, p.SchemaVersion)
	fmt.Fprintf(w, "digest      %s\nsigned by   %s (%s)\n\n", src.digest, src.keyID, sig)
	for _, ip := range m.IdentityProviders {
		fmt.Fprintf(w, "identity_provider %-20s %s aud=%s\n", ip.Name, ip.Issuer, strings.Join(ip.Audiences, ","))
	}
	for _, id := range m.Identities {
		how := "subject " + id.Subject
		if id.Match != "" {
			how = "match " + id.Match
		}
		fmt.Fprintf(w, "identity          %-20s %s: %s\n", id.Name, id.Provider, how)
	}
	for _, r := range m.Resources() {
		fmt.Fprintf(w, "%-17s %s\n", r.Kind, r.Name)
	}
	for _, pol := range m.Policies {
		who := "everyone"
		if len(pol.Identities)+len(pol.Groups) > 0 {
			who = strings.Join(append(prefixed("identity:", pol.Identities), prefixed("group:", pol.Groups)...), ", ")
		}
		fmt.Fprintf(w, "policy            %-20s on %s for %s\n", pol.Name, strings.Join(pol.Resources, ", "), who)
		for _, r := range pol.Rules {
			fmt.Fprintf(w, "  %-6s %-26s %s\n", r.Effect, r.Name, r.Reason)
		}
	}
	for _, mk := range m.Masks {
		targets := append(append(append([]string{}, mk.Columns...), prefixed("detector:", mk.Detectors)...), prefixed("kubernetes:", mk.Fields)...)
		fmt.Fprintf(w, "mask              %-20s %s %s\n", mk.Name, mk.Method, strings.Join(targets, ", "))
	}
	fmt.Fprintf(w, "tests             %d\n", len(m.Tests))
}

func prefixed(p string, xs []string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = p + x
	}
	return out
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

func newBundleDiffCmd() *cobra.Command {
	var format string
	var trust []string
	cmd := &cobra.Command{
		Use:   "diff OLD NEW [--format text|json]",
		Short: "Show what a policy change does: objects changed, and who gained or lost access",
		Long: `Compare two policies semantically. OLD and NEW are each a bundle file or a policy directory.

The diff has two parts:
  objects  identity providers, identities, resources, policies, rules, masks and tests that were
           added, removed or changed, field by field;
  access   who gained or lost which effect on which resource. Both policies decide the same set
           of probe requests (built from the commands, tables and values their rules mention,
           plus every test's request) for every identity and group they name, and every
           decision that differs is listed, with the rules behind it.

It is not a text diff: reordering files or blocks, or reformatting, shows no change.
Exit status 0 whether or not there are differences (like git diff without --exit-code);
use --exit-code to exit 1 when there are.`,
		Example: `  gatehouse bundle diff main.bundle pr.bundle
  gatehouse bundle diff examples/quickstart /tmp/quickstart-widened`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != "text" && format != "json" {
				return fmt.Errorf("--format must be text or json, not %q", format)
			}
			oldSrc, err := loadSource(args[0], trust, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			newSrc, err := loadSource(args[1], trust, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			d := celpolicy.Diff(oldSrc.policy, newSrc.policy)
			if format == "json" {
				if err := writeJSON(cmd.OutOrStdout(), d); err != nil {
					return err
				}
			} else {
				d.WriteText(cmd.OutOrStdout())
			}
			if exitCode, _ := cmd.Flags().GetBool("exit-code"); exitCode && !d.Empty() {
				return silentFailure(errors.New("policies differ"))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&format, "format", "text", "output format: text or json")
	cmd.Flags().StringArrayVar(&trust, "trust", nil, "verify bundle signatures against this public key")
	cmd.Flags().Bool("exit-code", false, "exit 1 when the policies differ")
	return cmd
}
