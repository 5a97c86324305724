package gateway

import (
	"bytes"
	"cmp"
	"crypto"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/hsm"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/recordstore"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
)

// RecorderConfig is the recorder block: where the key that seals
// recordings and signs the ledger lives, where the ledger is anchored,
// and how often it checkpoints open sessions. docs/threat-model.md says
// what each setting protects against.
type RecorderConfig struct {
	// Key is the signing key: a file (an ed25519 PKCS#8 PEM, created on
	// first start with its public key beside it as .pub) or an RFC 7512
	// PKCS#11 URI naming an ed25519 key in a token. Default
	// DATA_DIR/recorder.key, where whoever can write the recordings can
	// also read the key and re-sign a rewritten history.
	Key string
	// PIN is the token's user PIN as a secret reference (env:NAME or
	// file:/path), for a PKCS#11 key; never the PIN itself. The URI's
	// pin-source may name a PIN file instead.
	PIN string
	// Anchor receives every ledger entry: an absolute file path (meant for
	// write-once or append-only storage, never inside data_dir), an
	// http(s) URL (POST of JSON lines; plain http only to loopback), or an
	// s3://BUCKET/PREFIX reached with the bucket block's endpoint and
	// credentials, where each batch is a new object, never overwritten,
	// under object lock when the bucket has it.
	Anchor string
	// AnchorToken is a bearer token for an HTTP anchor, as a secret
	// reference.
	AnchorToken string
	// AnchorCA is a PEM file of the CAs an HTTPS anchor's certificate
	// chains to (default: the system's roots).
	AnchorCA string
	// AnchorRetention and AnchorLockMode are for an s3:// anchor in a
	// bucket with object lock: each anchor object is retained for this
	// long in this mode (COMPLIANCE or GOVERNANCE). 0: the bucket's
	// default retention.
	AnchorRetention time.Duration
	AnchorLockMode  string
	// CheckpointInterval is how often the ledger records the head of every
	// open session that grew. Default 30s; events after a session's last
	// checkpoint are the ones a cut tail can take while the gateway is
	// down.
	CheckpointInterval time.Duration
	// Durability is when a PostgreSQL statement's event must be durable:
	// "before_forward" (the default: before the statement reaches the
	// upstream) or "before_response" (the overlapped mode: it is forwarded
	// once written, the fdatasync runs during the upstream's round trip,
	// and no response reaches any caller before every event written so
	// far is durable). SSH and
	// Kubernetes requests are always recorded before they are forwarded.
	Durability string
	// Bucket, when set, uploads sealed recordings and the ledger to
	// S3-compatible object storage (recordingbucket.go).
	Bucket *BucketConfig
}

var recorderSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
	{Name: "key"}, {Name: "pin"}, {Name: "anchor"}, {Name: "anchor_token"}, {Name: "anchor_ca"}, {Name: "checkpoint_interval"},
	{Name: "anchor_retention"}, {Name: "anchor_lock_mode"}, {Name: "durability"},
}, Blocks: []hcl.BlockHeaderSchema{{Type: "bucket"}}}

// recorderBlock reads the recorder block and checks what can be checked
// without the token or the network.
func (d *decoder) recorderBlock(b *hcl.Block, dataDir string) RecorderConfig {
	c, blocks := d.contentBlocks(b.Body, recorderSchema)
	rc := RecorderConfig{Key: d.str(c["key"]), PIN: d.str(c["pin"]), Anchor: d.str(c["anchor"]),
		AnchorToken: d.str(c["anchor_token"]), AnchorCA: d.str(c["anchor_ca"]), CheckpointInterval: recorder.DefaultCheckpointInterval,
		Bucket: d.bucketBlock(blocks)}
	if a := c["checkpoint_interval"]; a != nil {
		rc.CheckpointInterval = d.duration(a, time.Second, time.Hour)
	}
	rc.Durability = DurabilityBeforeForward
	if a := c["durability"]; a != nil {
		switch rc.Durability = d.str(a); rc.Durability {
		case DurabilityBeforeForward, DurabilityBeforeResponse:
		default:
			d.errorf(a.Expr.Range(), "Invalid durability", "durability is %q (the default: a statement's event is durable before the statement reaches the database) or %q (it is forwarded once written, and its response is held until the event is durable; a crash can lose the event of a statement whose result the caller never got)", DurabilityBeforeForward, DurabilityBeforeResponse)
		}
	}
	if a := c["key"]; a != nil && hsm.IsURI(rc.Key) {
		u, err := hsm.ParseURI(rc.Key)
		switch {
		case err != nil:
			d.errorf(a.Expr.Range(), "Invalid PKCS#11 URI", "%v", err)
		case rc.PIN == "" && u.PINSource == "":
			d.errorf(b.DefRange, "Missing PIN", "a PKCS#11 key needs its token's user PIN: pin = \"env:NAME\" or \"file:/path\" (or pin-source in the URI)")
		case rc.PIN != "" && u.PINSource != "":
			d.errorf(a.Expr.Range(), "Two PINs", "give the PIN once: the pin attribute or the URI's pin-source")
		}
	}
	if a := c["pin"]; a != nil {
		if !hsm.IsURI(rc.Key) {
			d.errorf(a.Expr.Range(), "PIN without a token", "pin is for a PKCS#11 key (key = \"pkcs11:...\"); a key file has no PIN")
		}
		d.secretRef(a, rc.PIN)
	}
	if a := c["anchor"]; a != nil && rc.Anchor != "" {
		if recordstore.IsURL(rc.Anchor) {
			d.bucketAnchor(a, rc)
		} else if recorder.IsURL(rc.Anchor) {
			u, err := url.Parse(rc.Anchor)
			switch {
			case err != nil || u.Host == "":
				d.errorf(a.Expr.Range(), "Invalid anchor", "anchor must be an absolute file path, an http(s) URL or an s3:// bucket URL")
			case u.Scheme == "http" && !isLoopback(net.JoinHostPort(u.Hostname(), "0")):
				d.errorf(a.Expr.Range(), "Plaintext anchor outside loopback", "an http:// anchor is only accepted on a loopback address: use https")
			}
		} else if !filepath.IsAbs(rc.Anchor) {
			d.errorf(a.Expr.Range(), "Invalid anchor", "anchor must be an absolute file path, an http(s) URL or an s3:// bucket URL")
		} else if within(dataDir, rc.Anchor) {
			d.errorf(a.Expr.Range(), "Anchor inside data_dir", "an anchor in the data directory anchors nothing: whoever can rewrite the ledger can rewrite it too; put it on storage the gateway's host can append to but not rewrite")
		}
	}
	if a := c["anchor_token"]; a != nil {
		if !recorder.IsURL(rc.Anchor) {
			d.errorf(a.Expr.Range(), "Token without an HTTP anchor", "anchor_token is for an http(s) anchor")
		}
		d.secretRef(a, rc.AnchorToken)
	}
	if a := c["anchor_ca"]; a != nil && !strings.HasPrefix(rc.Anchor, "https://") {
		d.errorf(a.Expr.Range(), "CA without an HTTPS anchor", "anchor_ca is for an https anchor")
	}
	if a := c["anchor_retention"]; a != nil {
		rc.AnchorRetention = d.duration(a, time.Hour, 100*365*24*time.Hour)
		if !recordstore.IsURL(rc.Anchor) {
			d.errorf(a.Expr.Range(), "Retention without a bucket anchor", "anchor_retention is for an s3:// anchor in a bucket with object lock")
		}
	}
	if a := c["anchor_lock_mode"]; a != nil {
		rc.AnchorLockMode = strings.ToUpper(d.str(a))
		switch {
		case !recordstore.IsURL(rc.Anchor):
			d.errorf(a.Expr.Range(), "Lock mode without a bucket anchor", "anchor_lock_mode is for an s3:// anchor in a bucket with object lock")
		case rc.AnchorLockMode != "COMPLIANCE" && rc.AnchorLockMode != "GOVERNANCE":
			d.errorf(a.Expr.Range(), "Invalid lock mode", "anchor_lock_mode is COMPLIANCE (no one can delete or shorten a retained object, the account's root included) or GOVERNANCE (users granted s3:BypassGovernanceRetention can)")
		case rc.AnchorRetention == 0:
			d.errorf(a.Expr.Range(), "Lock mode without retention", "anchor_lock_mode applies with anchor_retention; without it, objects take the bucket's default retention and its mode")
		}
	}
	return rc
}

// bucketAnchor checks an s3:// anchor: a bucket URL, reached with the
// bucket block's endpoint and credentials, at another place than the
// recordings (its objects are not recordings).
func (d *decoder) bucketAnchor(a *hcl.Attribute, rc RecorderConfig) {
	loc, err := recordstore.ParseURL(rc.Anchor)
	switch {
	case err != nil:
		d.errorf(a.Expr.Range(), "Invalid anchor", "%v", err)
	case rc.Bucket == nil:
		d.errorf(a.Expr.Range(), "Bucket anchor without a bucket block", "an s3:// anchor is reached with the recorder's bucket block (its endpoint, region and credentials): add recorder { bucket { ... } }")
	case loc.Prefix == "":
		d.errorf(a.Expr.Range(), "Invalid anchor", "give the anchor a prefix of its own, s3://BUCKET/PREFIX (one per gateway replica)")
	default:
		if rl, err := recordstore.ParseURL(rc.Bucket.URL); err == nil && rl == loc {
			d.errorf(a.Expr.Range(), "Anchor beside the recordings", "the anchor needs a prefix other than the recordings' (%s), ideally in a bucket with object lock", rl)
		}
	}
}

// The recorder's durability modes (RecorderConfig.Durability).
const (
	DurabilityBeforeForward  = "before_forward"
	DurabilityBeforeResponse = "before_response"
)

// secretRef checks that an attribute is an env: or file: reference. The
// message never repeats the value: it may be the secret itself.
func (d *decoder) secretRef(a *hcl.Attribute, ref string) {
	sr, err := bundle.ParseSecretRef(ref)
	if err != nil || (sr.Scheme != "env" && sr.Scheme != "file") {
		d.errorf(a.Expr.Range(), "Not a secret reference", "%s must be a secret reference, env:NAME or file:/path; a secret is never written in the configuration", a.Name)
	}
}

// within reports whether path is dir or inside it.
func within(dir, path string) bool {
	ad, err1 := filepath.Abs(dir)
	ap, err2 := filepath.Abs(path)
	if err1 != nil || err2 != nil {
		return false
	}
	rel, err := filepath.Rel(ad, ap)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// openRecorder opens the recorder the config asks for: its key (a file,
// by default in the data directory, or a PKCS#11 token), its checkpoint
// interval and its anchor. It publishes the key's public half as
// DATA_DIR/recorder.pub (keeping an earlier, different one as
// recorder-KEYID.pub, so recordings it signed still verify), and says in
// the log what the setup does not protect against.
func openRecorder(cfg *Config, log *slog.Logger, hooks ...recorder.Option) (*recorder.Recorder, error) {
	rc := cfg.Recorder
	key, where, err := recorderKey(cfg)
	if err != nil {
		return nil, fmt.Errorf("gateway: recorder key: %w", err)
	}
	opts := []recorder.Option{recorder.WithLogger(log),
		recorder.WithCheckpointInterval(cmp.Or(rc.CheckpointInterval, recorder.DefaultCheckpointInterval))}
	opts = append(opts, hooks...)
	if rc.Anchor != "" {
		a, err := anchorOf(rc, log)
		if err != nil {
			closeKey(key)
			return nil, fmt.Errorf("gateway: recorder anchor: %w", err)
		}
		opts = append(opts, recorder.WithAnchor(a))
	}
	rec, err := recorder.Open(RecordingsDir(cfg.DataDir), key, opts...)
	if err != nil {
		closeKey(key)
		return nil, fmt.Errorf("gateway: %w", err)
	}
	keyID := bundle.KeyID(rec.PublicKey())
	if err := publishPublicKey(cfg.DataDir, rec.PublicKey(), log); err != nil {
		log.Warn("cannot write the recorder's public key into the data directory", "err", err)
	}
	inDataDir := !hsm.IsURI(where) && within(cfg.DataDir, where)
	log.Info("recorder", "key", where, "key_id", keyID, "anchor", rc.Anchor, "checkpoint_interval", cmp.Or(rc.CheckpointInterval, recorder.DefaultCheckpointInterval),
		"durability", cmp.Or(rc.Durability, DurabilityBeforeForward))
	if !inDataDir {
		if _, err := os.Stat(RecorderKeyPath(cfg.DataDir)); err == nil && where != RecorderKeyPath(cfg.DataDir) {
			log.Warn("an unused recorder key is still in the data directory: whoever holds it can re-sign the recordings it signed; keep it offline and remove it", "path", RecorderKeyPath(cfg.DataDir))
		}
	}
	if inDataDir && rc.Anchor == "" {
		log.Warn("the recorder key is in the data directory and there is no anchor: whoever can write the data directory can rewrite recordings and the ledger and re-sign them (set recorder.key outside data_dir or to a PKCS#11 key, and recorder.anchor; see docs/threat-model.md)")
	}
	for _, id := range rec.CrashSealed {
		log.Warn("sealed the recording of a session the last run left open (crashed); audit verify reports it as crash-sealed", "recording", id)
	}
	return rec, nil
}

// recorderKey loads the signing key and says where it is (a path, or the
// token's URI without its PIN).
func recorderKey(cfg *Config) (crypto.Signer, string, error) {
	rc := cfg.Recorder
	if hsm.IsURI(rc.Key) {
		u, err := hsm.ParseURI(rc.Key)
		if err != nil {
			return nil, "", err
		}
		var pin string
		if rc.PIN != "" {
			pin, err = secrets.Resolver{}.Resolve(rc.PIN)
		} else {
			pin, err = hsm.ReadPIN(u.PINSource)
		}
		if err != nil {
			return nil, "", err
		}
		s, err := hsm.Open(u, pin)
		if err != nil {
			return nil, "", err
		}
		return s, u.String(), nil
	}
	path := cmp.Or(rc.Key, RecorderKeyPath(cfg.DataDir))
	k, err := recorder.LoadOrCreateKey(path)
	if err != nil {
		return nil, "", err
	}
	return k, path, nil
}

func closeKey(k crypto.Signer) {
	if c, ok := k.(io.Closer); ok {
		c.Close()
	}
}

// anchorOf makes the anchor the config names.
func anchorOf(rc RecorderConfig, log *slog.Logger) (recorder.Anchor, error) {
	if recordstore.IsURL(rc.Anchor) {
		return bucketAnchorOf(rc, log)
	}
	if !recorder.IsURL(rc.Anchor) {
		return recorder.NewFileAnchor(rc.Anchor), nil
	}
	var token string
	if rc.AnchorToken != "" {
		var err error
		if token, err = (secrets.Resolver{}).Resolve(rc.AnchorToken); err != nil {
			return nil, err
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if rc.AnchorCA != "" {
		pem, err := os.ReadFile(rc.AnchorCA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", rc.AnchorCA)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return recorder.NewHTTPAnchor(rc.Anchor, &http.Client{Transport: tr}, token), nil
}

// publishPublicKey writes the recorder's public key as
// DATA_DIR/recorder.pub, where audit verify looks by default. A
// different key already there (the key moved to a token, or rotated) is
// kept as recorder-KEYID.pub, which audit verify also trusts by default.
func publishPublicKey(dataDir string, pub ed25519.PublicKey, log *slog.Logger) error {
	path := recorder.PublicKeyPath(RecorderKeyPath(dataDir))
	pem, err := bundle.MarshalPublicKey(pub)
	if err != nil {
		return err
	}
	old, err := os.ReadFile(path)
	switch {
	case err == nil && bytes.Equal(old, pem):
		return nil
	case err == nil:
		if oldKey, perr := bundle.LoadPublicKey(path); perr == nil {
			keep := filepath.Join(dataDir, "recorder-"+bundle.KeyID(oldKey)[:16]+".pub")
			if err := os.Rename(path, keep); err != nil {
				return err
			}
			log.Info("the recorder key changed; the previous public key is kept for the recordings it signed", "path", keep)
		}
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	return bundle.WriteFileAtomic(path, pem, 0o644)
}
