// Package gateway assembles the runtime: it loads the gateway's own
// configuration, keeps the signed policy bundle current, and runs the
// protocol listeners (each a wire package on the shared enforcement core)
// and the admin listener.
package gateway

import (
	"fmt"
	"net"
	"os"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"

	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/session"
)

// Config is the gateway's configuration (gateway.hcl). It is not policy:
// policy comes from the signed bundle. Every field is documented in
// ConfigReference, which `gatehouse gateway --help` prints.
type Config struct {
	// DataDir holds the last good bundle (and, later, recordings and
	// approvals). Created with mode 0700 when missing.
	DataDir string
	// Postgres is the PostgreSQL listener; nil when the gateway serves no
	// PostgreSQL clients. At least one protocol listener is required.
	Postgres *PostgresListener
	// SSH is the SSH listener; nil when the gateway serves no SSH clients.
	SSH *SSHListener
	// Kubernetes is the Kubernetes API listener; nil when the gateway
	// serves no Kubernetes clients.
	Kubernetes *KubernetesListener
	// Bundle says where the signed bundle comes from and whom to trust.
	Bundle BundleSource
	// Admin is the admin HTTP listener; empty Listen disables it.
	Admin AdminListener
	// Recorder says where the recorder key lives, where the ledger is
	// anchored, and how often it checkpoints (recording.go).
	Recorder RecorderConfig
	// State is where state shared by gateway replicas lives.
	State StateConfig
	// Log configures logging.
	Log LogConfig
	// ClockSkew is allowed on token exp and nbf. Default 30s.
	ClockSkew time.Duration
}

// PostgresListener configures the PostgreSQL listener.
type PostgresListener struct {
	Listen            string
	TLSCert, TLSKey   string
	InsecurePlaintext bool
	// Limits bound the listener's sessions and pending connections.
	Limits session.Limits
}

// SSHListener configures the SSH listener.
type SSHListener struct {
	Listen string
	// HostKey is the gateway's own SSH host key (OpenSSH PEM), created on
	// first start. Default DATA_DIR/ssh_host_ed25519_key.
	HostKey string
	// RecordShellInput records what callers type into interactive shells
	// and commands run with a terminal (off by default: typed passwords
	// would be recorded).
	RecordShellInput bool
	// RecordLimit bounds the bytes recorded per stream of one channel.
	// Default 16 MiB.
	RecordLimit int64
	// Limits bound the listener's sessions and pending connections.
	Limits session.Limits
}

// KubernetesListener configures the Kubernetes API listener (HTTPS).
type KubernetesListener struct {
	Listen string
	// TLSCert and TLSKey are the listener's certificate. When unset, the
	// gateway makes a self-signed one in DATA_DIR on first start
	// (KubernetesTLSPaths), which gatehouse kubeconfig embeds.
	TLSCert, TLSKey string
	// RecordLimit bounds the bytes recorded per stream of an exec or
	// attach. Default 16 MiB.
	RecordLimit int64
	// Limits bound the listener's sessions.
	Limits session.Limits
}

// BundleSource configures where the bundle comes from: a file or a URL,
// exactly one.
type BundleSource struct {
	// File is a bundle file, watched (fsnotify on its directory) and
	// polled every PollInterval.
	File string
	// URL is a bundle served over HTTPS (http only on loopback), polled
	// every PollInterval with If-None-Match and If-Modified-Since; after
	// errors the polls back off (bundlestore.WatchURL).
	URL string
	// CAFile is a PEM file of CAs trusted for URL besides the system's.
	CAFile string
	// Token is a secret reference (env:NAME or file:/path) to the bearer
	// token sent to URL, resolved for every request; never the token.
	Token        string
	TrustedKeys  []string
	PollInterval time.Duration
}

// AdminListener configures the admin HTTP listener.
type AdminListener struct {
	Listen string
	// TLSCert and TLSKey serve the admin API over HTTPS.
	TLSCert, TLSKey string
	// AdminGroups may read every approval request (approving takes a
	// rule's approver group).
	AdminGroups []string
	// InsecurePlaintext allows plain HTTP on an address that is not
	// loopback (approvers' tokens cross this listener). Logged loudly.
	InsecurePlaintext bool
	// ReadyDiskFree is the free space (bytes) the recordings' file
	// system must keep for /readyz to say ready; MaxBundleAge, when set,
	// the age past which the active bundle makes /readyz fail.
	ReadyDiskFree int64
	MaxBundleAge  time.Duration
}

// StateConfig configures state that several gateway replicas share.
type StateConfig struct {
	// Postgres is a secret reference (env:NAME or file:/path) to the DSN
	// of a PostgreSQL database that keeps approval requests for every
	// replica that names it (approval.OpenPostgres). Empty: they are kept
	// in DATA_DIR/approvals, for this gateway alone.
	Postgres string
	// Key is a secret reference (env:NAME or file:/path) to the key,
	// at least 32 bytes, that authenticates the approval requests in
	// the state database (approval.WithRowKey). Give every replica the
	// same key, and keep it out of the database: without it, whoever
	// can write the database can approve requests.
	Key string
}

// LogConfig configures logging.
type LogConfig struct{ Level, Format string }

var (
	configSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "data_dir", Required: true}},
		Blocks: []hcl.BlockHeaderSchema{
			{Type: "postgres"}, {Type: "ssh"}, {Type: "kubernetes"}, {Type: "bundle"}, {Type: "admin"}, {Type: "log"}, {Type: "auth"}, {Type: "recorder"}, {Type: "state"},
		},
	}
	postgresSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
		{Name: "listen", Required: true}, {Name: "tls_cert"}, {Name: "tls_key"}, {Name: "insecure_plaintext"},
	}, Blocks: []hcl.BlockHeaderSchema{{Type: "limits"}}}
	sshSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
		{Name: "listen", Required: true}, {Name: "host_key"}, {Name: "record_shell_input"}, {Name: "record_limit"},
	}, Blocks: []hcl.BlockHeaderSchema{{Type: "limits"}}}
	kubernetesSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
		{Name: "listen", Required: true}, {Name: "tls_cert"}, {Name: "tls_key"}, {Name: "record_limit"},
	}, Blocks: []hcl.BlockHeaderSchema{{Type: "limits"}}}
	limitsSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
		{Name: "max_sessions"}, {Name: "max_sessions_per_identity"}, {Name: "max_sessions_per_resource"},
		{Name: "max_pending"}, {Name: "login_timeout"}, {Name: "auth_failures_per_minute"},
	}}
	bundleSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
		{Name: "file"}, {Name: "url"}, {Name: "ca_file"}, {Name: "token"}, {Name: "trusted_keys", Required: true}, {Name: "poll_interval"},
	}}
	adminSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "listen", Required: true}, {Name: "tls_cert"}, {Name: "tls_key"}, {Name: "admin_groups"},
		{Name: "insecure_plaintext"}, {Name: "ready_disk_free"}, {Name: "max_bundle_age"}}}
	logSchema  = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "level"}, {Name: "format"}}}
	authSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "clock_skew"}}}

	stateSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "postgres", Required: true}, {Name: "key"}}}
)

// LoadConfig reads and checks a gateway.hcl file. Problems are diagnostics
// with file:line:col.
func LoadConfig(path string) (*Config, map[string]*hcl.File, hcl.Diagnostics) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Cannot read gateway config", Detail: err.Error()}}
	}
	return ParseConfig(src, path)
}

// ParseConfig parses gateway.hcl source.
func ParseConfig(src []byte, filename string) (*Config, map[string]*hcl.File, hcl.Diagnostics) {
	f, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	files := map[string]*hcl.File{filename: f}
	if diags.HasErrors() {
		return nil, files, diags
	}
	d := &decoder{}
	cfg := &Config{Log: LogConfig{Level: "info", Format: "text"}, ClockSkew: 30 * time.Second, Bundle: BundleSource{PollInterval: 5 * time.Second},
		Admin:    AdminListener{ReadyDiskFree: DefaultReadyDiskFree},
		Recorder: RecorderConfig{CheckpointInterval: recorder.DefaultCheckpointInterval}}
	content, diags := f.Body.Content(configSchema)
	d.diags = append(d.diags, diags...)
	cfg.DataDir = d.str(content.Attributes["data_dir"])
	seen := map[string]hcl.Range{}
	for _, b := range content.Blocks {
		if first, dup := seen[b.Type]; dup {
			d.errorf(b.DefRange, "Duplicate block", "only one %s block is allowed (the first is at %s)", b.Type, first)
			continue
		}
		seen[b.Type] = b.DefRange
		switch b.Type {
		case "postgres":
			c, blocks := d.contentBlocks(b.Body, postgresSchema)
			cfg.Postgres = &PostgresListener{
				Listen: d.str(c["listen"]), TLSCert: d.str(c["tls_cert"]), TLSKey: d.str(c["tls_key"]),
				InsecurePlaintext: d.boolean(c["insecure_plaintext"]), Limits: d.limits(blocks),
			}
			d.checkListen(c["listen"], cfg.Postgres.Listen)
			switch {
			case (cfg.Postgres.TLSCert == "") != (cfg.Postgres.TLSKey == ""):
				d.errorf(b.DefRange, "Incomplete TLS settings", "set both tls_cert and tls_key")
			case cfg.Postgres.TLSCert == "" && !cfg.Postgres.InsecurePlaintext:
				d.errorf(b.DefRange, "TLS required", "the password clients send is an access token: set tls_cert and tls_key, or, for loopback development only, insecure_plaintext = true")
			}
			if cfg.Postgres.InsecurePlaintext && !isLoopback(cfg.Postgres.Listen) {
				d.errorf(c["insecure_plaintext"].Expr.Range(), "Plaintext outside loopback", "insecure_plaintext is only accepted when listen is a loopback address (127.0.0.1, [::1], localhost); tokens would cross the network in the clear")
			}
		case "ssh":
			c, blocks := d.contentBlocks(b.Body, sshSchema)
			cfg.SSH = &SSHListener{Listen: d.str(c["listen"]), HostKey: d.str(c["host_key"]), RecordShellInput: d.boolean(c["record_shell_input"]),
				Limits: d.limits(blocks)}
			d.checkListen(c["listen"], cfg.SSH.Listen)
			if a := c["record_limit"]; a != nil {
				cfg.SSH.RecordLimit = d.integer(a, 0, 1<<40)
			}
		case "kubernetes":
			c, blocks := d.contentBlocks(b.Body, kubernetesSchema)
			cfg.Kubernetes = &KubernetesListener{Listen: d.str(c["listen"]), TLSCert: d.str(c["tls_cert"]), TLSKey: d.str(c["tls_key"]),
				Limits: d.limits(blocks)}
			d.checkListen(c["listen"], cfg.Kubernetes.Listen)
			if (cfg.Kubernetes.TLSCert == "") != (cfg.Kubernetes.TLSKey == "") {
				d.errorf(b.DefRange, "Incomplete TLS settings", "set both tls_cert and tls_key, or neither (a self-signed certificate is made in data_dir)")
			}
			if a := c["record_limit"]; a != nil {
				cfg.Kubernetes.RecordLimit = d.integer(a, 0, 1<<40)
			}
		case "bundle":
			cfg.Bundle = d.bundleBlock(b, cfg.Bundle)
		case "admin":
			c := d.content(b.Body, adminSchema)
			cfg.Admin.Listen = d.str(c["listen"])
			d.checkListen(c["listen"], cfg.Admin.Listen)
			cfg.Admin.TLSCert, cfg.Admin.TLSKey = d.str(c["tls_cert"]), d.str(c["tls_key"])
			cfg.Admin.AdminGroups = d.strs(c["admin_groups"])
			cfg.Admin.InsecurePlaintext = d.boolean(c["insecure_plaintext"])
			if a := c["ready_disk_free"]; a != nil {
				cfg.Admin.ReadyDiskFree = d.integer(a, 0, 1<<50)
			}
			if a := c["max_bundle_age"]; a != nil {
				cfg.Admin.MaxBundleAge = d.duration(a, 0, 365*24*time.Hour)
			}
			switch {
			case (cfg.Admin.TLSCert == "") != (cfg.Admin.TLSKey == ""):
				d.errorf(b.DefRange, "Incomplete TLS settings", "admin: set both tls_cert and tls_key, or neither")
			case cfg.Admin.TLSCert == "" && cfg.Admin.Listen != "" && !isLoopback(cfg.Admin.Listen) && !cfg.Admin.InsecurePlaintext:
				d.errorf(c["listen"].Expr.Range(), "TLS required off loopback",
					"the admin listener %s is not a loopback address, and approvers' bearer tokens cross it: set tls_cert and tls_key, or insecure_plaintext = true to accept plain HTTP (logged as a warning)", cfg.Admin.Listen)
			}
		case "log":
			c := d.content(b.Body, logSchema)
			if a := c["level"]; a != nil {
				cfg.Log.Level = d.oneOf(a, "debug", "info", "warn", "error")
			}
			if a := c["format"]; a != nil {
				cfg.Log.Format = d.oneOf(a, "text", "json")
			}
		case "recorder":
			cfg.Recorder = d.recorderBlock(b, cfg.DataDir)
		case "state":
			c := d.content(b.Body, stateSchema)
			if a := c["postgres"]; a != nil {
				cfg.State.Postgres = d.str(a)
				d.secretRef(a, cfg.State.Postgres)
			}
			if a := c["key"]; a != nil {
				cfg.State.Key = d.str(a)
				d.secretRef(a, cfg.State.Key)
			}
		case "auth":
			c := d.content(b.Body, authSchema)
			if a := c["clock_skew"]; a != nil {
				cfg.ClockSkew = d.duration(a, 0, 5*time.Minute)
			}
		}
	}
	if !cfg.servesAProtocol() {
		d.diags = append(d.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "No protocol listener",
			Detail: "the gateway serves no protocol: add a protocol block with its listen address, such as postgres { listen = \"127.0.0.1:6432\" }, ssh { listen = \"127.0.0.1:2222\" } or kubernetes { listen = \"127.0.0.1:8443\" } (see gatehouse gateway --help)"})
	}
	if _, ok := seen["bundle"]; !ok {
		d.diags = append(d.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Missing bundle block", Detail: "add a bundle block naming the bundle file (or url) and the trusted keys"})
	}
	if d.diags.HasErrors() {
		return nil, files, d.diags
	}
	return cfg, files, nil
}

// servesAProtocol reports whether any protocol listener is configured.
func (c *Config) servesAProtocol() bool {
	return c.Postgres != nil || c.SSH != nil || c.Kubernetes != nil
}

type decoder struct{ diags hcl.Diagnostics }

func (d *decoder) errorf(rng hcl.Range, summary, format string, args ...any) {
	r := rng
	d.diags = append(d.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: fmt.Sprintf(format, args...), Subject: &r})
}

// contentBlocks is content with the body's blocks.
func (d *decoder) contentBlocks(body hcl.Body, schema *hcl.BodySchema) (hcl.Attributes, hcl.Blocks) {
	c, diags := body.Content(schema)
	d.diags = append(d.diags, diags...)
	return c.Attributes, c.Blocks
}

// limits reads a listener's limits block: an absent setting takes the
// default, 0 means no limit.
func (d *decoder) limits(blocks hcl.Blocks) session.Limits {
	var l session.Limits
	for i, b := range blocks {
		if i > 0 {
			d.errorf(b.DefRange, "Duplicate block", "only one limits block is allowed")
			continue
		}
		c := d.content(b.Body, limitsSchema)
		count := func(name string, into *int) {
			if a := c[name]; a != nil {
				if n := int(d.integer(a, 0, 1<<30)); n == 0 {
					*into = -1 // none
				} else {
					*into = n
				}
			}
		}
		count("max_sessions", &l.MaxSessions)
		count("max_sessions_per_identity", &l.MaxSessionsPerIdentity)
		count("max_sessions_per_resource", &l.MaxSessionsPerResource)
		count("max_pending", &l.MaxPending)
		count("auth_failures_per_minute", &l.AuthFailuresPerMinute)
		if a := c["login_timeout"]; a != nil {
			l.LoginTimeout = d.duration(a, time.Second, 10*time.Minute)
		}
	}
	return l
}

func (d *decoder) content(body hcl.Body, schema *hcl.BodySchema) hcl.Attributes {
	c, diags := body.Content(schema)
	d.diags = append(d.diags, diags...)
	return c.Attributes
}

func (d *decoder) value(a *hcl.Attribute, ty cty.Type) (cty.Value, bool) {
	if a == nil {
		return cty.NilVal, false
	}
	v, diags := a.Expr.Value(nil)
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() || v.IsNull() {
		return cty.NilVal, false
	}
	cv, err := convert.Convert(v, ty)
	if err != nil {
		d.errorf(a.Expr.Range(), "Incorrect attribute value type", "%s must be %s", a.Name, ty.FriendlyName())
		return cty.NilVal, false
	}
	return cv, true
}

func (d *decoder) str(a *hcl.Attribute) string {
	if v, ok := d.value(a, cty.String); ok {
		return v.AsString()
	}
	return ""
}

func (d *decoder) strs(a *hcl.Attribute) []string {
	v, ok := d.value(a, cty.List(cty.String))
	if !ok {
		return nil
	}
	var out []string
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		if !e.IsNull() {
			out = append(out, e.AsString())
		}
	}
	return out
}

func (d *decoder) boolean(a *hcl.Attribute) bool {
	v, ok := d.value(a, cty.Bool)
	return ok && v.True()
}

func (d *decoder) integer(a *hcl.Attribute, lo, hi int64) int64 {
	v, ok := d.value(a, cty.Number)
	if !ok {
		return 0
	}
	bf := v.AsBigFloat()
	n, acc := bf.Int64()
	if !bf.IsInt() || acc != 0 || n < lo || n > hi {
		d.errorf(a.Expr.Range(), "Invalid number", "%s must be a whole number between %d and %d", a.Name, lo, hi)
		return 0
	}
	return n
}

func (d *decoder) duration(a *hcl.Attribute, lo, hi time.Duration) time.Duration {
	s := d.str(a)
	v, err := time.ParseDuration(s)
	if err != nil || v < lo || v > hi {
		d.errorf(a.Expr.Range(), "Invalid duration", "%s must be a duration between %s and %s, such as \"5s\"", a.Name, lo, hi)
		return 0
	}
	return v
}

func (d *decoder) oneOf(a *hcl.Attribute, allowed ...string) string {
	s := d.str(a)
	for _, x := range allowed {
		if s == x {
			return s
		}
	}
	d.errorf(a.Expr.Range(), "Invalid value", "%s must be one of %q", a.Name, allowed)
	return allowed[0]
}

func (d *decoder) checkListen(a *hcl.Attribute, addr string) {
	if a == nil || addr == "" {
		return
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		d.errorf(a.Expr.Range(), "Invalid listen address", "%q must be host:port", addr)
	}
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// DefaultReadyDiskFree is the free space the recordings' file system must
// keep for /readyz to report ready.
const DefaultReadyDiskFree = 100 << 20
