package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/hashicorp/hcl/v2"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// source is a compiled policy from a directory of HCL or a bundle file.
type source struct {
	path   string
	policy *celpolicy.Policy
	model  *bundle.Model
	// payload is set for bundles.
	payload *bundle.Payload
	// verified is true when the bundle's signature was checked.
	verified bool
	keyID    string
	digest   string
	// blocks are where a directory's objects are defined (hclconfig).
	blocks map[string]hcl.Range
}

// loadSource compiles a policy directory or reads a bundle. Policy errors are
// printed to stderr as diagnostics and reported as a silent failure. A
// bundle is verified when trusted keys are given; otherwise a warning says it
// was not.
func loadSource(path string, trust []string, stderr io.Writer) (*source, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &exitError{code: exitUsage, err: fmt.Errorf("%s does not exist: give a policy directory (of *.hcl files) or a bundle file", path)}
	}
	if err != nil {
		return nil, &exitError{code: exitUsage, err: err}
	}
	if fi.IsDir() {
		if len(trust) > 0 {
			fmt.Fprintf(stderr, "note: --trust applies to bundle files; %s is a policy directory, compiled from source\n", path)
		}
		res, diags := hclconfig.Load(path)
		if diags.HasErrors() {
			_ = hclconfig.WriteDiagnostics(stderr, res.Files, diags)
			return nil, failed("%s: %d error(s) in the policy", path, len(diags.Errs()))
		}
		return &source{path: path, policy: res.Policy, model: res.Model, blocks: res.Blocks}, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &exitError{code: exitUsage, err: err}
	}
	if !bundle.IsBundle(data) {
		return nil, &exitError{code: exitUsage, err: fmt.Errorf("%s is neither a policy directory nor a Gatehouse bundle", path)}
	}
	src := &source{path: path}
	if len(trust) > 0 {
		kr, err := bundle.LoadKeyring(trust...)
		if err != nil {
			return nil, &exitError{code: exitUsage, err: err}
		}
		v, err := bundle.Verify(data, kr, bundle.VerifyOptions{})
		if err != nil {
			return nil, failed("%s: %w", path, err)
		}
		src.payload, src.verified, src.keyID, src.digest = v.Payload, true, v.KeyID, v.Digest
	} else {
		p, env, err := bundle.ReadUnverified(data)
		if err != nil {
			return nil, failed("%s: %w", path, err)
		}
		fmt.Fprintf(stderr, "warning: %s: signature not verified (pass --trust KEY.pub to verify it)\n", path)
		src.payload = p
		if len(env.Signatures) > 0 {
			src.keyID = env.Signatures[0].KeyID
		}
		if raw, err := env.PayloadBytes(); err == nil {
			src.digest = bundle.Digest(raw)
		}
	}
	pol, err := celpolicy.FromPayload(src.payload, sqlfacts.Analysis())
	if err != nil {
		return nil, failed("%s: bundle does not compile: %w", path, err)
	}
	src.policy, src.model = pol, &src.payload.Model
	return src, nil
}

// revision is the bundle's revision, 0 for a policy directory.
func (s *source) revision() uint64 {
	if s.payload != nil {
		return s.payload.Revision
	}
	return 0
}
