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
	// (off by default: typed passwords would be recorded).
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
}

// LogConfig configures logging.
type LogConfig struct{ Level, Format string }

// ConfigReference documents every field of gateway.hcl.
const ConfigReference = `# gateway.hcl: the gateway's own settings. Policy is not here: it comes from
# the signed bundle named in the bundle block.

data_dir = "/var/lib/gatehouse"      # required (created 0700): the last good bundle, session
                                     # recordings and their ledger (recordings/), the recorder key
                                     # (recorder.key, unless recorder.key says otherwise) and its
                                     # public key (recorder.pub), and approval requests (approvals/,
                                     # unless the state block names a database)

# At least one protocol block is required; each is optional on its own.
postgres {
  listen             = "0.0.0.0:6432" # required in the block; host:port for PostgreSQL clients
  tls_cert           = "/etc/gatehouse/tls/server.crt"  # PEM certificate offered to clients
  tls_key            = "/etc/gatehouse/tls/server.key"  # its PEM private key
  insecure_plaintext = false          # true allows the token (the password) without TLS;
                                      # only accepted when listen is a loopback address
  limits {                            # optional; what one listener's callers may hold
    max_sessions              = 1000  # open sessions (0: no limit)
    max_sessions_per_identity = 50    # open sessions of one caller (an identity, or a subject)
    max_sessions_per_resource = 0     # open sessions of one resource: keep it below the
                                      # database's max_connections (default 0: no limit)
    max_pending               = 256   # connections not authenticated yet; the oldest is
                                      # closed to make room for a new one
    login_timeout             = "10s" # time to authenticate
    auth_failures_per_minute  = 0     # per source address; past it the address is refused
                                      # for the rest of the minute (default 0: no limit)
  }
}

ssh {
  listen             = "0.0.0.0:2222"  # required in the block; host:port for SSH clients
                                       # (ssh HOST@gateway -p 2222: the user names the ssh_host)
  host_key           = "/var/lib/gatehouse/ssh_host_ed25519_key"  # default DATA_DIR/ssh_host_ed25519_key,
                                       # created on first start; its fingerprint is logged
  record_shell_input = false           # record what callers type into shells (off: typed
                                       # passwords would land in recordings); exec input is recorded
  record_limit       = 16777216        # bytes recorded per stream of a channel (default 16 MiB);
                                       # beyond it bytes are counted, not kept
  limits { }                           # as in the postgres block
}

kubernetes {
  listen       = "0.0.0.0:8443"        # required in the block; host:port of the HTTPS API for
                                       # kubectl: cluster NAME is https://gateway:8443/k8s/NAME
                                       # (gatehouse kubeconfig --resource NAME writes the kubeconfig)
  tls_cert     = "/etc/gatehouse/tls/kube.crt"  # PEM certificate offered to clients; when unset, a
  tls_key      = "/etc/gatehouse/tls/kube.key"  # self-signed one is made in DATA_DIR on first start
                                       # (kubernetes-tls.crt; gatehouse kubeconfig embeds it)
  record_limit = 16777216              # bytes of exec and attach output recorded per stream
  limits { }                           # as in the postgres block (a session is one token on one cluster)
}

bundle {
  file          = "/var/lib/gatehouse/policy.bundle"  # file or url, exactly one: a bundle file,
                                                      # watched (fsnotify) and polled
  # url         = "https://bundles.internal/prod/policy.bundle"  # or a bundle served over HTTPS:
                                                      # a web server, a CDN or an object store's
                                                      # https URL (an S3 object URL); polled with
                                                      # If-None-Match / If-Modified-Since (unchanged:
                                                      # a 304, no body); http:// only on loopback. On
                                                      # errors the polls back off (doubling, jittered,
                                                      # up to 10 poll intervals and at most 5m) and
                                                      # the last good bundle stays active
  # ca_file     = "/etc/gatehouse/tls/bundles-ca.pem" # optional, url only: PEM CAs trusted besides
                                                      # the system's
  # token       = "env:BUNDLE_TOKEN"                  # optional, url only: sent as Authorization:
                                                      # Bearer; env:NAME or file:/path (read for every
                                                      # request, so a rotated file is used), never the
                                                      # token itself
  trusted_keys  = ["/etc/gatehouse/gatehouse.pub"]    # required; PKIX PEM ed25519 public keys;
                                                      # list two during a key rotation
  poll_interval = "5s"                                 # default 5s (1s to 1h): how often the file or
                                                      # url is checked (fsnotify is used as well)
}

admin {
  listen       = "127.0.0.1:9090"    # optional; /healthz, /readyz, /metrics and /v1/bundle are open:
                                     # keep the listener on loopback or a private network.
                                     # /v1/approvals needs an OIDC bearer token from a trusted issuer
  tls_cert     = "/etc/gatehouse/tls/admin.crt"  # optional: serve HTTPS (tokens cross this listener)
  tls_key      = "/etc/gatehouse/tls/admin.key"
  admin_groups = ["security"]        # optional: may read every approval request; approving
                                     # always takes one of the rule's approver groups
  insecure_plaintext = false         # plain HTTP on an address that is not loopback is refused
                                     # unless this is true (logged as a warning at every start)
  ready_disk_free = 104857600        # /readyz fails when the recordings' file system has less
                                     # free space than this (bytes; default 100 MiB)
  max_bundle_age  = "0s"             # /readyz fails when the active bundle is older (0: never):
                                     # since it was loaded or, for a bundle url, since the url
                                     # last confirmed it (a 304, or the same bundle)
}

recorder {
  # Optional. What an attacker who can write data_dir can do under each setting:
  # docs/threat-model.md, Recordings.
  key    = "/etc/gatehouse/recorder.key"   # the key that seals recordings and signs the ledger:
                                     # a file (ed25519 PKCS#8 PEM, created on first start with
                                     # its .pub beside it), default DATA_DIR/recorder.key; keep it
                                     # outside data_dir, or name a key in a PKCS#11 token:
  # key  = "pkcs11:token=gatehouse;object=recorder?module-path=/usr/lib/softhsm/libsofthsm2.so"
                                     # (RFC 7512; an ed25519 key, signed with CKM_EDDSA;
                                     # gatehouse keygen --pkcs11 makes one)
  # pin  = "env:GATEHOUSE_HSM_PIN"   # the token's user PIN, for a PKCS#11 key: env:NAME or
                                     # file:/path (or pin-source in the URI), never the PIN itself
  anchor = "https://anchor.internal/v1/gatehouse/ledger"  # optional: every ledger entry is
                                     # also sent here, off the host: an http(s) URL (POST of
                                     # JSON lines; GET returns them for audit verify --anchor;
                                     # http only to loopback) or an absolute file path on
                                     # write-once or append-only storage (never in data_dir)
  anchor_token = "env:ANCHOR_TOKEN"  # optional: Authorization: Bearer for an http(s) anchor
  anchor_ca    = "/etc/gatehouse/tls/anchor-ca.pem"  # optional: CAs for an https anchor
  checkpoint_interval = "30s"        # default 30s (1s to 1h): how often the ledger records the
                                     # head of every open session that grew (and at shutdown)
  # bucket {                         # optional: upload each recording once its session ends,
                                     # and the ledger after it, to S3-compatible object storage;
                                     # the local write stays first, and the local copy is kept
  #   url        = "s3://audit-recordings/gatehouse"  # s3://BUCKET/PREFIX
  #   endpoint   = "https://s3.internal:9000"  # default AWS S3; http only on loopback
  #   region     = "us-east-1"
  #   access_key = "env:GATEHOUSE_S3_ACCESS_KEY"   # secret references (env:NAME, file:/path);
  #   secret_key = "env:GATEHOUSE_S3_SECRET_KEY"   # both empty: anonymous requests
  #   max_behind = "15m"             # /readyz fails while a recording waits longer for upload
  #                                  # (failures are retried with backoff; 0: never)
  # }
}

state {
  # Optional: state that several gateway replicas share. Without it, approval requests are
  # kept in data_dir, for this gateway alone.
  postgres = "env:GATEHOUSE_STATE_DSN"  # required in the block: the DSN of a PostgreSQL database
                                     # (postgres://user:password@host:5432/db?sslmode=verify-full)
                                     # as a secret reference, env:NAME or file:/path, never the DSN
                                     # itself. Approval requests live there: a vote through any
                                     # replica settles a request held on any other, and a
                                     # single-use approval is spent once across them. The schema is
                                     # created and migrated at start (the role needs CREATE on the
                                     # schema); gatehouse gateway --check reports its version
}

log {
  level  = "info"                    # debug, info, warn, error
  format = "text"                    # text or json
}

auth {
  clock_skew = "30s"                 # allowed on token exp and nbf; at most 5m
}
`

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

	stateSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "postgres", Required: true}}}
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
