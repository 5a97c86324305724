package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/recordstore"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
	"github.com/gatehouse-dev/gatehouse/gateway/sessionindex"
)

// BucketConfig is the recorder block's bucket block: recordings (and
// their ledger) are uploaded to S3-compatible object storage once their
// sessions end. The local write stays first: a recording is durable in
// data_dir before anything is forwarded, and the local copy is kept.
type BucketConfig struct {
	// URL is s3://BUCKET/PREFIX.
	URL string
	// Endpoint is the S3 API's base URL (https; http only on loopback);
	// empty: AWS S3.
	Endpoint string
	Region   string
	// AccessKey and SecretKey are secret references (env:NAME or
	// file:/path); both empty: anonymous requests.
	AccessKey string
	SecretKey string
	// MaxBehind: /readyz fails while a recording has waited longer than
	// this for its upload (default 15m; 0 keeps /readyz out of it).
	MaxBehind time.Duration
}

// DefaultMaxBehind is the default bucket.max_behind.
const DefaultMaxBehind = 15 * time.Minute

var bucketSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
	{Name: "url", Required: true}, {Name: "endpoint"}, {Name: "region"}, {Name: "access_key"}, {Name: "secret_key"}, {Name: "max_behind"},
}}

// bucketBlock reads recorder { bucket { ... } }.
func (d *decoder) bucketBlock(blocks hcl.Blocks) *BucketConfig {
	var bc *BucketConfig
	for i, b := range blocks {
		if i > 0 {
			d.errorf(b.DefRange, "Duplicate block", "only one bucket block is allowed")
			continue
		}
		c := d.content(b.Body, bucketSchema)
		bc = &BucketConfig{URL: d.str(c["url"]), Endpoint: d.str(c["endpoint"]), Region: d.str(c["region"]),
			AccessKey: d.str(c["access_key"]), SecretKey: d.str(c["secret_key"]), MaxBehind: DefaultMaxBehind}
		if a := c["url"]; a != nil {
			if _, err := recordstore.ParseURL(bc.URL); err != nil {
				d.errorf(a.Expr.Range(), "Invalid bucket URL", "%v", err)
			}
		}
		if a := c["endpoint"]; a != nil {
			if _, _, err := recordstore.CheckEndpoint(bc.Endpoint); err != nil {
				d.errorf(a.Expr.Range(), "Invalid endpoint", "%v", err)
			}
		}
		for _, name := range []string{"access_key", "secret_key"} {
			if a := c[name]; a != nil {
				d.secretRef(a, d.str(a))
			}
		}
		if (bc.AccessKey == "") != (bc.SecretKey == "") {
			d.errorf(b.DefRange, "Incomplete credentials", "give both access_key and secret_key (secret references), or neither for anonymous requests")
		}
		if a := c["max_behind"]; a != nil {
			bc.MaxBehind = d.duration(a, 0, 30*24*time.Hour)
		}
	}
	return bc
}

// openUploader makes the uploader the bucket block asks for: credentials
// resolved, the recordings already in the directory (what earlier runs
// left) noted for the first pass. With a state database, it also opens
// the session index there, which the uploader keeps.
func openUploader(cfg *Config, rec *recorder.Recorder, log *slog.Logger) (*recordstore.Uploader, *sessionindex.Index, error) {
	bc := cfg.Recorder.Bucket
	var res secrets.Resolver
	st, err := openBucket(bc, res)
	if err != nil {
		return nil, nil, err
	}
	log.Info("recordings are uploaded once sealed", "bucket", st.Location().String(), "endpoint", bc.Endpoint)
	opts := []recordstore.UploaderOption{recordstore.WithLogger(log)}
	var ix *sessionindex.Index
	if ref := cfg.State.Postgres; ref != "" {
		dsn, err := res.Resolve(ref)
		if err != nil {
			return nil, nil, fmt.Errorf("state.postgres: %w", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), stateTimeout)
		defer cancel()
		if ix, err = sessionindex.Open(ctx, dsn); err != nil {
			return nil, nil, fmt.Errorf("state.postgres (%s): %w", ref, err)
		}
		opts = append(opts, recordstore.WithIndex(ix))
		log.Info("sessions are catalogued in the state database's session index", "state", ref, "schema", sessionindex.SchemaVersion())
	}
	u, err := recordstore.NewUploader(st, rec.Dir(), rec.PublicKey(), rec.LedgerSnapshot, opts...)
	if err != nil {
		if ix != nil {
			ix.Close()
		}
		return nil, nil, err
	}
	return u, ix, nil
}

// openBucket makes a client for the bucket block, its credentials
// resolved.
func openBucket(bc *BucketConfig, res secrets.Resolver) (*recordstore.Store, error) {
	o := recordstore.Options{Endpoint: bc.Endpoint, Region: bc.Region}
	if bc.AccessKey != "" {
		var err error
		if o.AccessKey, err = res.Resolve(bc.AccessKey); err != nil {
			return nil, err
		}
		if o.SecretKey, err = res.Resolve(bc.SecretKey); err != nil {
			return nil, err
		}
	}
	return recordstore.Open(bc.URL, o)
}

// flushUploads makes a last attempt, after the recorder closed, so the
// bucket holds the last recordings and the ledger's close entry.
func flushUploads(u *recordstore.Uploader, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := u.Flush(ctx); err != nil {
		log.Warn("recordings upload: the last attempt failed; the next start uploads what is left", "err", err)
	}
}

// uploadsBehind says why /readyz fails for the uploads, or "".
func (g *Gateway) uploadsBehind() string {
	if g.uploader == nil || g.cfg.Recorder.Bucket.MaxBehind <= 0 {
		return ""
	}
	n, oldest := g.uploader.Backlog()
	if oldest <= g.cfg.Recorder.Bucket.MaxBehind {
		return ""
	}
	msg := fmt.Sprintf("recordings upload is behind: %d recording(s) waiting, the oldest for %s (recorder.bucket.max_behind %s)",
		n, oldest.Round(time.Second), g.cfg.Recorder.Bucket.MaxBehind)
	if e := g.uploader.Stats.LastError.Load(); e != nil {
		msg += "; last error: " + *e
	}
	return msg
}

// bucketCheck is the preflight check of recorder.bucket: the credentials
// resolve, and the store lets them list the bucket. It writes nothing.
func bucketCheck(ctx context.Context, bc *BucketConfig, res secrets.Resolver) error {
	st, err := openBucket(bc, res)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return st.Probe(ctx)
}

// indexCheck is the preflight check of the session index's schema in the
// state database. It changes nothing.
func indexCheck(ctx context.Context, ref string, res secrets.Resolver) (string, error) {
	return schemaCheck(ctx, ref, res, sessionindex.Check)
}

// bucketAnchorOf makes an s3:// anchor with the bucket block's endpoint
// and credentials, and says in the log what its bucket protects: with
// object lock, each batch of ledger entries is retained and cannot be
// deleted or replaced (COMPLIANCE) until its retention ends; without it,
// whoever holds the credentials can delete anchor objects (overwrites are
// still refused, and audit verify reads every version).
func bucketAnchorOf(rc RecorderConfig, log *slog.Logger) (recorder.Anchor, error) {
	bc := *rc.Bucket
	bc.URL = rc.Anchor
	st, err := openBucket(&bc, secrets.Resolver{})
	if err != nil {
		return nil, err
	}
	a := recordstore.NewAnchor(st, recordstore.AnchorOptions{Retention: rc.AnchorRetention, Mode: rc.AnchorLockMode})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	status, err := a.Check(ctx)
	switch {
	case err != nil:
		log.Warn("cannot read the anchor bucket's object lock configuration now; the anchor is retried as entries are sent", "anchor", a.String(), "err", err)
	case !status.Locked || status.Retention == 0:
		log.Warn("the anchor's objects are not retained: whoever holds the bucket credentials can delete them (create the anchor bucket with object lock and a default retention, or set recorder.anchor_retention)", "anchor", a.String(), "lock", status.String())
	default:
		log.Info("ledger entries are anchored in the bucket under object lock", "anchor", a.String(), "lock", status.String())
	}
	return a, nil
}

// anchorCheck is the preflight check of an s3:// anchor: the bucket
// answers, and its object lock configuration says whether anchor objects
// are retained. It writes nothing.
func anchorCheck(ctx context.Context, rc RecorderConfig, res secrets.Resolver) (string, error) {
	bc := *rc.Bucket
	bc.URL = rc.Anchor
	st, err := openBucket(&bc, res)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := st.Probe(ctx); err != nil {
		return "", err
	}
	status, err := recordstore.NewAnchor(st, recordstore.AnchorOptions{Retention: rc.AnchorRetention, Mode: rc.AnchorLockMode}).Check(ctx)
	if err != nil {
		return "", err
	}
	note := status.String()
	if !status.Locked || status.Retention == 0 {
		note += " (warning: anchor objects can be deleted by whoever holds the credentials)"
	}
	return note, nil
}
