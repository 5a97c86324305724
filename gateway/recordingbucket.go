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
// left) noted for the first pass.
func openUploader(bc *BucketConfig, rec *recorder.Recorder, log *slog.Logger) (*recordstore.Uploader, error) {
	var res secrets.Resolver
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
	st, err := recordstore.Open(bc.URL, o)
	if err != nil {
		return nil, err
	}
	log.Info("recordings are uploaded once sealed", "bucket", st.Location().String(), "endpoint", bc.Endpoint)
	return recordstore.NewUploader(st, rec.Dir(), rec.PublicKey(), rec.LedgerSnapshot, recordstore.WithLogger(log))
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
