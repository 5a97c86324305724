// Package devenv is the throwaway development environment behind
// `gatehouse dev` and `make demo`: a private PostgreSQL from the system's
// binaries, seeded with sample rows; a DEVELOPMENT-ONLY OIDC issuer on
// loopback that signs tokens for the policy's identities; and the real
// gateway, in this process, enforcing the policy as a signed bundle. Nothing
// in it is a stand-in for the data path: the gateway, the bundle, token
// verification, the recorder and PostgreSQL are the production code and
// binaries. Only the issuer and the certificates are made up for the
// occasion.
package devenv

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/jackc/pgx/v5"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/examples/quickstart"
	"github.com/gatehouse-dev/gatehouse/gateway"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
	"github.com/gatehouse-dev/gatehouse/internal/gotool"
	"github.com/gatehouse-dev/gatehouse/internal/kubecluster"
	"github.com/gatehouse-dev/gatehouse/internal/pgcluster"
)

// DefaultListen is where the gateway listens for PostgreSQL clients when the
// port is free; otherwise a random loopback port is used.
const DefaultListen = "127.0.0.1:6432"

// TokenTTL is the lifetime of the tokens written for the policy's callers.
const TokenTTL = time.Hour

// Options configure Start.
type Options struct {
	// PolicyDir is a directory of *.hcl policy files; empty means the
	// embedded quickstart (examples/quickstart).
	PolicyDir string
	// Seeds maps a postgres resource name to SQL that fills its database,
	// run as the resource's upstream role. The embedded quickstart brings
	// its own.
	Seeds map[string]string
	// Listen is the gateway's PostgreSQL listener (a loopback address).
	// Empty means DefaultListen, or a random port when that is taken.
	Listen string
	// Log receives the gateway's log (default: Dir/gateway.log).
	Log io.Writer
	// LogLevel is the gateway's log level (default info).
	LogLevel slog.Level
	// Progress receives one line per start-up step (default: discarded).
	Progress io.Writer
	// SSHListen is the gateway's SSH listener (a loopback address), used
	// when the policy has ssh_host resources. Empty means
	// DefaultSSHListen, or a random port when that is taken.
	SSHListen string
	// KubeListen is the gateway's Kubernetes API listener (a loopback
	// address), used when the policy has kubernetes_cluster resources and
	// the Kubernetes binaries are built. Empty means DefaultKubeListen, or
	// a random port when that is taken.
	KubeListen string
	// PGOptions are added to the PostgreSQL server's (a benchmark raises
	// max_connections this way).
	PGOptions []pgcluster.Option
	// Configure, when set, changes the gateway's config before it starts
	// (a benchmark raises a limit this way).
	Configure func(*gateway.Config)
	// Root is the repository whose .cache/bin holds the Kubernetes
	// binaries (kubecluster.Available). Empty means the one around the
	// working directory, if any.
	Root string
}

// Caller is an identity of the policy that the development issuer can
// mint tokens for.
type Caller struct {
	Identity string
	Provider string
	Subject  string
	// Claims are the extra claims minted into its tokens (the groups claim
	// included), taken from the first policy test that names the identity
	// when its match needs more than a subject.
	Claims map[string]any
	// TokenFile holds a token valid for TokenTTL from start-up.
	TokenFile string
}

// Env is a running development environment.
type Env struct {
	// Dir holds everything: the CA, the bundle, the gateway's data
	// directory, the tokens. Close removes it.
	Dir string
	// CAFile is the CA that signed the gateway's (and the database's)
	// certificate: clients use sslmode=verify-full sslrootcert=CAFile.
	CAFile string
	// DataDir is the gateway's data directory (recordings, recorder key).
	DataDir string
	// BundleFile is the signed bundle the gateway enforces.
	BundleFile string
	// PolicyDir is the policy directory, or "" for the embedded quickstart.
	PolicyDir string
	// Model is the policy as the gateway enforces it: issuers and database
	// addresses rewritten to this environment's.
	Model *bundle.Model
	// Callers are the identities tokens were minted for, by name.
	Callers []Caller
	// Approvers hold a token for each approver group of the policy's
	// review rules (subject dev-approver-GROUP), by group.
	Approvers []Caller
	// Databases are the postgres resources served, by name.
	Databases []string
	// LogFile is the gateway's log when Options.Log was nil.
	LogFile string
	// Skipped lists resources the development environment does not serve
	// (a kubernetes_cluster, an ssh_host without sshd installed), with why.
	Skipped []string
	// SSH are the ssh_host resources served, each by a throwaway sshd.
	SSH []SSHHost
	// SSHCaller holds a token for a caller the policy lets onto the SSH
	// hosts (nil when none is known).
	SSHCaller *Caller
	// KnownHosts pins the gateway's SSH host key for ssh clients.
	KnownHosts string
	// Kube is the Kubernetes API server every kubernetes_cluster resource
	// points at (nil when the binaries are not built), and KubeClusters
	// the clusters served.
	Kube         *kubecluster.Cluster
	KubeClusters []string

	PG      *pgcluster.Server
	Issuer  *Issuer
	Gateway *gateway.Gateway

	stop    context.CancelFunc
	stopped chan error
	logFile *os.File
	// gatewayCfg is the gateway's config, which StartExtraGateway copies.
	gatewayCfg gateway.Config
	extras     []extraGateway
}

// Start brings the environment up. On error, whatever was started is
// stopped again.
func Start(ctx context.Context, opts Options) (_ *Env, err error) {
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	step := func(format string, args ...any) { fmt.Fprintf(progress, "  "+format+"\n", args...) }

	dir, err := os.MkdirTemp("", "gatehouse-dev-")
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	e := &Env{Dir: dir, PolicyDir: opts.PolicyDir, DataDir: filepath.Join(dir, "data"), CAFile: filepath.Join(dir, "ca.pem")}
	defer func() {
		if err != nil {
			_ = e.Close()
		}
	}()

	res, seeds, err := loadPolicy(opts)
	if err != nil {
		return nil, err
	}
	m := res.Model
	e.Model = m
	step("policy: %s (%d identities, %d postgres resources, %d rules, %d tests pass)",
		e.policyName(), len(m.Identities), len(m.Postgres), res.Policy.RuleCount(), len(m.Tests))
	if len(m.Postgres) == 0 && len(m.SSHHosts) == 0 && len(m.KubernetesClusters) == 0 {
		return nil, errors.New("dev: the policy has no postgres, ssh_host or kubernetes_cluster resource; gatehouse dev serves those")
	}

	ca, err := newDevCA()
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	for name, data := range map[string][]byte{e.CAFile: ca.CAPEM, certFile: ca.CertPEM, keyFile: ca.KeyPEM} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			return nil, fmt.Errorf("dev: %w", err)
		}
	}

	if len(m.Postgres) > 0 {
		start := time.Now()
		e.PG, err = pgcluster.Start(append([]pgcluster.Option{pgcluster.WithTLS(ca.CertPEM, ca.KeyPEM)}, opts.PGOptions...)...)
		if err != nil {
			return nil, fmt.Errorf("dev: PostgreSQL: %w", err)
		}
		step("postgres: a throwaway cluster on %s (%s)", e.PG.Addr(), time.Since(start).Round(time.Millisecond))
		if err := e.setUpDatabases(seeds, step); err != nil {
			return nil, err
		}
	}
	if err := e.setUpSSHHosts(step); err != nil {
		return nil, err
	}
	root := opts.Root
	if root == "" {
		if wd, err := os.Getwd(); err == nil {
			root, _ = gotool.FindRoot(wd)
		}
	}
	if root == "" {
		for _, r := range m.KubernetesClusters {
			e.Skipped = append(e.Skipped, fmt.Sprintf("kubernetes_cluster %q (the Kubernetes binaries are built in a gatehouse checkout: run gatehouse dev from one, after `%s`)", r.Name, kubecluster.BuildCommand))
		}
	} else if err := e.setUpClusters(ctx, root, step); err != nil {
		return nil, err
	}

	e.Issuer, err = StartIssuer("127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	for i := range m.IdentityProviders {
		p := &m.IdentityProviders[i]
		p.Issuer = e.Issuer.AddProvider(p.Name, p.Audiences[0])
		p.JWKS, p.JWKSURL, p.Algorithms = "", "", []string{"ES256"}
	}
	step("issuer: DEVELOPMENT ONLY, signs a token for anyone who asks: %s", e.Issuer.URL("<provider>"))
	if err := e.mintCallers(); err != nil {
		return nil, err
	}

	if err := e.signBundle(); err != nil {
		return nil, err
	}
	step("bundle: %s, signed with a key made for this run", e.BundleFile)

	if err := e.startGateway(ctx, opts, certFile, keyFile); err != nil {
		return nil, err
	}
	if err := e.writeKnownHosts(); err != nil {
		return nil, err
	}
	var served []string
	if a := e.Gateway.Addr("postgres"); a != "" {
		served = append(served, "postgres on "+a+" (TLS)")
	}
	if a := e.Gateway.Addr("ssh"); a != "" {
		served = append(served, "ssh on "+a)
	}
	if a := e.Gateway.Addr("kubernetes"); a != "" {
		served = append(served, "kubernetes on https://"+a+"/k8s/NAME")
	}
	step("gateway: %s, admin on http://%s", strings.Join(served, ", "), e.Gateway.AdminAddr)
	return e, nil
}

// loadPolicy loads and validates the policy, runs its tests, and reads the
// seeds.
func loadPolicy(opts Options) (*hclconfig.Result, map[string]string, error) {
	var res *hclconfig.Result
	var diags hcl.Diagnostics
	seeds := map[string]string{}
	if opts.PolicyDir == "" {
		files := map[string][]byte{}
		entries, _ := fs.Glob(quickstart.Files, "*.hcl")
		for _, name := range entries {
			data, err := fs.ReadFile(quickstart.Files, name)
			if err != nil {
				return nil, nil, err
			}
			files[path.Join("examples/quickstart", name)] = data
		}
		res, diags = hclconfig.LoadFiles(files)
		for resource, name := range quickstart.Seeds {
			data, err := fs.ReadFile(quickstart.Files, name)
			if err != nil {
				return nil, nil, err
			}
			seeds[resource] = string(data)
		}
	} else {
		res, diags = hclconfig.Load(opts.PolicyDir)
	}
	if diags.HasErrors() {
		var b strings.Builder
		_ = hclconfig.WriteDiagnostics(&b, res.Files, diags)
		return nil, nil, fmt.Errorf("dev: %d error(s) in the policy:\n%s", len(diags.Errs()), b.String())
	}
	var failed []string
	for _, r := range res.Policy.RunTests() {
		if !r.Passed {
			failed = append(failed, r.Name)
		}
	}
	if len(failed) > 0 {
		return nil, nil, fmt.Errorf("dev: %d policy test(s) fail (%s); run `gatehouse check` on the policy to see why", len(failed), strings.Join(failed, ", "))
	}
	for resource, sql := range opts.Seeds {
		if !slices.ContainsFunc(res.Model.Postgres, func(p bundle.Postgres) bool { return p.Name == resource }) {
			return nil, nil, fmt.Errorf("dev: seed for %q: the policy has no postgres resource of that name", resource)
		}
		seeds[resource] = sql
	}
	return res, seeds, nil
}

func (e *Env) policyName() string {
	if e.PolicyDir == "" {
		return "the embedded quickstart (examples/quickstart)"
	}
	return e.PolicyDir
}

// setUpDatabases creates each resource's upstream role and database, points
// the resource at them with verify-full TLS and a file: password reference,
// and runs its seed.
func (e *Env) setUpDatabases(seeds map[string]string, step func(string, ...any)) error {
	secrets := filepath.Join(e.Dir, "secrets")
	if err := os.Mkdir(secrets, 0o700); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	roles := map[string]string{pgcluster.Superuser: e.PG.SuperuserPassword()}
	databases := map[string]bool{"postgres": true}
	for i := range e.Model.Postgres {
		r := &e.Model.Postgres[i]
		pw, ok := roles[r.Username]
		if !ok {
			pw = randomPassword()
			if err := e.PG.CreateRole(r.Username, pw); err != nil {
				return fmt.Errorf("dev: resource %q: %w", r.Name, err)
			}
			roles[r.Username] = pw
		}
		if !databases[r.Database] {
			if err := e.PG.CreateDatabase(r.Database, r.Username); err != nil {
				return fmt.Errorf("dev: resource %q: %w", r.Name, err)
			}
			databases[r.Database] = true
		}
		if err := e.createUpstreamRoles(r, pw, roles); err != nil {
			return err
		}
		pwFile := filepath.Join(secrets, r.Name+".password")
		if err := os.WriteFile(pwFile, []byte(pw), 0o600); err != nil {
			return fmt.Errorf("dev: %w", err)
		}
		r.Address = e.PG.Addr()
		r.Password = "file:" + pwFile
		r.TLS = &bundle.TLS{Mode: "verify-full", CAFile: e.CAFile}
		e.Databases = append(e.Databases, r.Name)

		if sql, ok := seeds[r.Name]; ok {
			if err := seed(e.PG, r.Database, r.Username, pw, sql); err != nil {
				return fmt.Errorf("dev: seeding %q: %w", r.Name, err)
			}
			step("database %q: seeded, owned by role %q (the gateway's upstream role)", r.Database, r.Username)
		} else {
			step("database %q: empty, owned by role %q", r.Database, r.Username)
		}
	}
	return nil
}

// createUpstreamRoles creates the roles a resource's upstream_roles maps
// callers to, as an operator would: NOLOGIN roles granted to the gateway's
// login role (set_role), or, for method login, LOGIN roles with the same
// password (a production database would map the gateway's client
// certificate to them instead). The seed grants them privileges.
func (e *Env) createUpstreamRoles(r *bundle.Postgres, pw string, existing map[string]string) error {
	u := r.UpstreamRoles
	if u == nil {
		return nil
	}
	want := map[string]bool{}
	for _, m := range []map[string]string{u.Identities, u.Groups} {
		for _, role := range m {
			want[role] = true
		}
	}
	if u.Default != "" {
		want[u.Default] = true
	}
	for _, role := range slices.Sorted(maps.Keys(want)) {
		if role == r.Username {
			continue // a role may always SET ROLE to itself
		}
		id := pgx.Identifier{role}.Sanitize()
		if _, ok := existing[role]; !ok {
			var err error
			switch u.MethodOrDefault() {
			case bundle.RoleLogin:
				err = e.PG.CreateRole(role, pw)
			default:
				err = e.PG.Exec("postgres", "CREATE ROLE "+id+" NOLOGIN")
			}
			if err != nil {
				return fmt.Errorf("dev: resource %q: upstream role %q: %w", r.Name, role, err)
			}
			existing[role] = pw
		}
		if u.MethodOrDefault() == bundle.RoleSetRole {
			if err := e.PG.Exec("postgres", "GRANT "+id+" TO "+pgx.Identifier{r.Username}.Sanitize()); err != nil {
				return fmt.Errorf("dev: resource %q: upstream role %q: %w", r.Name, role, err)
			}
		}
	}
	return nil
}

// mintCallers works out a subject and claims for each identity and writes
// a token for it.
func (e *Env) mintCallers() error {
	tokens := filepath.Join(e.Dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	groupsClaim := map[string]string{}
	for _, p := range e.Model.IdentityProviders {
		groupsClaim[p.Name] = cmp.Or(p.GroupsClaim, "groups")
	}
	for _, id := range e.Model.Identities {
		c := Caller{Identity: id.Name, Provider: id.Provider, Subject: id.Subject, Claims: map[string]any{}}
		// A test that names the identity says what a real token of it
		// looks like; for a match-based identity that is the only source.
		for _, t := range e.Model.Tests {
			if t.Identity != id.Name {
				continue
			}
			if c.Subject == "" {
				c.Subject = t.Subject
			}
			if t.Claims != "" {
				_ = json.Unmarshal([]byte(t.Claims), &c.Claims)
			}
			if len(t.Groups) > 0 {
				c.Claims[groupsClaim[id.Provider]] = t.Groups
			}
			if c.Subject != "" {
				break
			}
		}
		if c.Subject == "" {
			continue // a match-based identity no test describes
		}
		tok, err := e.Issuer.Mint(c.Provider, c.Subject, c.Claims, TokenTTL)
		if err != nil {
			return fmt.Errorf("dev: token for %q: %w", id.Name, err)
		}
		c.TokenFile = filepath.Join(tokens, id.Name)
		if err := os.WriteFile(c.TokenFile, []byte(tok), 0o600); err != nil {
			return fmt.Errorf("dev: %w", err)
		}
		e.Callers = append(e.Callers, c)
	}
	sort.Slice(e.Callers, func(i, j int) bool { return e.Callers[i].Identity < e.Callers[j].Identity })
	if err := e.mintSSHCaller(groupsClaim); err != nil {
		return err
	}
	return e.mintApprovers(tokens, groupsClaim)
}

// mintApprovers writes a token per approver group of the review rules: a
// person, not one of the policy's identities, so that nobody approves
// their own request.
func (e *Env) mintApprovers(tokens string, groupsClaim map[string]string) error {
	if len(e.Model.IdentityProviders) == 0 {
		return nil
	}
	prov := e.Model.IdentityProviders[0].Name
	seen := map[string]bool{}
	for _, p := range e.Model.Policies {
		for _, r := range p.Rules {
			if r.Approval == nil {
				continue
			}
			for _, g := range r.Approval.Groups {
				if seen[g] {
					continue
				}
				seen[g] = true
				c := Caller{Identity: "approver in " + g, Provider: prov, Subject: "dev-approver-" + g,
					Claims: map[string]any{groupsClaim[prov]: []string{g}}}
				tok, err := e.Issuer.Mint(prov, c.Subject, c.Claims, TokenTTL)
				if err != nil {
					return fmt.Errorf("dev: approver token for %q: %w", g, err)
				}
				c.TokenFile = filepath.Join(tokens, "approver-"+g)
				if err := os.WriteFile(c.TokenFile, []byte(tok), 0o600); err != nil {
					return fmt.Errorf("dev: %w", err)
				}
				e.Approvers = append(e.Approvers, c)
			}
		}
	}
	return nil
}

// Approver returns the approver token holder of a group.
func (e *Env) Approver(group string) (Caller, bool) {
	for _, c := range e.Approvers {
		if c.Subject == "dev-approver-"+group {
			return c, true
		}
	}
	return Caller{}, false
}

func (e *Env) signBundle() error {
	priv, err := bundle.GenerateKey()
	if err != nil {
		return err
	}
	pub, err := bundle.MarshalPublicKey(priv.Public().(ed25519.PublicKey))
	if err != nil {
		return err
	}
	if problems := e.Model.Validate(); len(problems) > 0 {
		return fmt.Errorf("dev: the rewritten policy is invalid: %v", problems)
	}
	payload, err := bundle.NewPayload(*e.Model, bundle.BuildOptions{CreatedAt: time.Now(), Compiler: "gatehouse dev"})
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	raw, err := bundle.EncodePayload(payload)
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	file, err := bundle.Sign(raw, priv)
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	e.BundleFile = filepath.Join(e.Dir, "policy.bundle")
	if err := os.WriteFile(e.BundleFile, file, 0o644); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	return os.WriteFile(filepath.Join(e.Dir, "bundle.pub"), pub, 0o644)
}

func (e *Env) startGateway(ctx context.Context, opts Options, certFile, keyFile string) error {
	listen := opts.Listen
	if listen == "" {
		listen = DefaultListen
		if ln, err := net.Listen("tcp", listen); err != nil {
			listen = "127.0.0.1:0" // taken: any free port
		} else {
			ln.Close()
		}
	}
	if host, _, err := net.SplitHostPort(listen); err != nil || !isLoopback(host) {
		return fmt.Errorf("dev: --listen %q: the development gateway trusts a development issuer, so it only listens on loopback", listen)
	}
	cfg := &gateway.Config{
		DataDir:   e.DataDir,
		Bundle:    gateway.BundleSource{File: e.BundleFile, TrustedKeys: []string{filepath.Join(e.Dir, "bundle.pub")}, PollInterval: time.Second},
		Admin:     gateway.AdminListener{Listen: "127.0.0.1:0"},
		Log:       gateway.LogConfig{Level: opts.LogLevel.String(), Format: "text"},
		ClockSkew: 30 * time.Second,
	}
	if len(e.Model.Postgres) > 0 {
		cfg.Postgres = &gateway.PostgresListener{Listen: listen, TLSCert: certFile, TLSKey: keyFile}
	}
	if len(e.SSH) > 0 {
		sl, err := listenAddr(opts.SSHListen, DefaultSSHListen, "--ssh-listen")
		if err != nil {
			return err
		}
		cfg.SSH = &gateway.SSHListener{Listen: sl}
	}
	if e.Kube != nil {
		kl, err := listenAddr(opts.KubeListen, DefaultKubeListen, "--kube-listen")
		if err != nil {
			return err
		}
		cfg.Kubernetes = &gateway.KubernetesListener{Listen: kl}
	}
	logw := opts.Log
	if logw == nil {
		e.LogFile = filepath.Join(e.Dir, "gateway.log")
		f, err := os.OpenFile(e.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("dev: %w", err)
		}
		e.logFile = f
		logw = f
	}
	if opts.Configure != nil {
		opts.Configure(cfg)
	}
	e.gatewayCfg = *cfg
	g, stop, stopped, err := launch(ctx, cfg, logw)
	if err != nil {
		return err
	}
	e.Gateway, e.stop, e.stopped = g, stop, stopped
	return nil
}

// Close stops the gateway (which ends and seals its sessions), the issuer,
// PostgreSQL and the SSH hosts, and removes Dir.
func (e *Env) Close() error {
	var errs []error
	for _, x := range e.extras {
		x.stop()
		select {
		case err := <-x.stopped:
			if err != nil && !errors.Is(err, context.Canceled) {
				errs = append(errs, fmt.Errorf("gateway: %w", err))
			}
		case <-time.After(10 * time.Second):
			errs = append(errs, errors.New("gateway: did not stop within 10s"))
		}
	}
	if e.stop != nil {
		e.stop()
		select {
		case err := <-e.stopped:
			if err != nil && !errors.Is(err, context.Canceled) {
				errs = append(errs, fmt.Errorf("gateway: %w", err))
			}
		case <-time.After(10 * time.Second):
			errs = append(errs, errors.New("gateway: did not stop within 10s"))
		}
	}
	if e.Issuer != nil {
		errs = append(errs, e.Issuer.Close())
	}
	if e.PG != nil {
		errs = append(errs, e.PG.Close())
	}
	for _, h := range e.SSH {
		errs = append(errs, h.Server.Close())
	}
	if e.Kube != nil {
		errs = append(errs, e.Kube.Close())
	}
	if e.logFile != nil {
		errs = append(errs, e.logFile.Close())
	}
	errs = append(errs, os.RemoveAll(e.Dir))
	return errors.Join(errs...)
}

// Caller returns the caller for an identity name.
func (e *Env) Caller(identity string) (Caller, bool) {
	for _, c := range e.Callers {
		if c.Identity == identity {
			return c, true
		}
	}
	return Caller{}, false
}

// Token reads the token minted for an identity.
func (e *Env) Token(identity string) (string, error) {
	c, ok := e.Caller(identity)
	if !ok {
		return "", fmt.Errorf("dev: no token for identity %q", identity)
	}
	b, err := os.ReadFile(c.TokenFile)
	return strings.TrimSpace(string(b)), err
}

// ConnString is a libpq connection string (without the password) for a
// resource through the gateway, verifying the gateway's certificate.
func (e *Env) ConnString(resource, user string) string {
	host, port, _ := net.SplitHostPort(e.Gateway.Addr("postgres"))
	return fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=verify-full sslrootcert=%s", host, port, resource, user, e.CAFile)
}

func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func randomPassword() string { return "dev-" + rand.Text() }

// seed runs sql on db as user, over TLS, in one transaction.
func seed(pg *pgcluster.Server, db, user, password, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.ConnString(user, password, db))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	// Without arguments pgx sends one simple Query, which PostgreSQL runs
	// as a single implicit transaction: a failing seed leaves nothing.
	_, err = conn.Exec(ctx, sql)
	return err
}

// WaitSealed waits until every recorded session has ended and been sealed
// (the gateway ends a session a moment after its client leaves), and
// returns the sessions, oldest first.
func (e *Env) WaitSealed(ctx context.Context, timeout time.Duration) ([]recorder.Summary, error) {
	deadline := time.Now().Add(timeout)
	for {
		ss, err := recorder.List(gateway.RecordingsDir(e.DataDir))
		if err != nil {
			return nil, err
		}
		open := 0
		for _, s := range ss {
			if !s.Sealed {
				open++
			}
		}
		if open == 0 {
			return ss, nil
		}
		if time.Now().After(deadline) {
			return ss, fmt.Errorf("dev: %d session(s) still open after %s", open, timeout)
		}
		select {
		case <-ctx.Done():
			return ss, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
