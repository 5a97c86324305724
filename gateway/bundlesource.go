package gateway

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
)

// bundleBlock reads the bundle block: one source (a file, or a URL with
// its CA file and token), the trusted keys and the poll interval. The
// diagnostics never repeat the URL: a presigned one carries a credential.
func (d *decoder) bundleBlock(b *hcl.Block, bs BundleSource) BundleSource {
	c := d.content(b.Body, bundleSchema)
	bs.File, bs.URL, bs.CAFile, bs.Token = d.str(c["file"]), d.str(c["url"]), d.str(c["ca_file"]), d.str(c["token"])
	bs.TrustedKeys = d.strs(c["trusted_keys"])
	if a := c["poll_interval"]; a != nil {
		bs.PollInterval = d.duration(a, time.Second, time.Hour)
	}
	if a := c["trusted_keys"]; a != nil && len(bs.TrustedKeys) == 0 {
		d.errorf(a.Expr.Range(), "No trusted keys", "list at least one public key file: the gateway loads only bundles signed by a trusted key")
	}
	switch {
	case c["file"] != nil && c["url"] != nil:
		d.errorf(c["url"].Expr.Range(), "Two bundle sources", "set file or url, not both: a gateway follows one source")
	case bs.File == "" && bs.URL == "":
		d.errorf(b.DefRange, "Missing bundle source", "set file (a bundle file the gateway watches) or url (an https URL it polls)")
	}
	if a := c["url"]; a != nil && bs.URL != "" {
		u, err := url.Parse(bs.URL)
		switch {
		case err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
			d.errorf(a.Expr.Range(), "Invalid bundle URL", "url must be an https:// URL")
		case u.User != nil:
			d.errorf(a.Expr.Range(), "Credentials in the bundle URL", "the URL is shown in logs and status: give a bearer token as token = \"env:NAME\" or \"file:/path\" instead")
		case u.Scheme == "http" && !bundlestore.IsLoopbackHost(u.Hostname()):
			d.errorf(a.Expr.Range(), "Plaintext bundle URL outside loopback",
				"an http:// url is only accepted on a loopback address: use https (the signature protects the bundle, but the token and the policy would cross the network in the clear)")
		}
	}
	if a := c["ca_file"]; a != nil && !strings.HasPrefix(bs.URL, "https://") {
		d.errorf(a.Expr.Range(), "CA file without a bundle URL", "ca_file is for an https url")
	}
	if a := c["token"]; a != nil {
		if bs.URL == "" {
			d.errorf(a.Expr.Range(), "Token without a bundle URL", "token is for a bundle url")
		}
		d.secretRef(a, bs.Token)
	}
	return bs
}

// where names the bundle source for logs and status: the file, or the URL
// redacted.
func (bs BundleSource) where() string {
	if bs.URL != "" {
		return bundlestore.Redact(bs.URL)
	}
	return bs.File
}

// bundleURLSource makes the source a bundle url names. Its client trusts
// the system's CAs and ca_file's. The token is resolved for every request,
// so a token file rotated on disk is used, and once here, so that a
// missing one stops the start rather than failing every poll.
func bundleURLSource(bs BundleSource, res secrets.Resolver) (*bundlestore.URLSource, error) {
	var roots *x509.CertPool
	if bs.CAFile != "" {
		pem, err := os.ReadFile(bs.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		if roots, err = x509.SystemCertPool(); err != nil {
			roots = x509.NewCertPool()
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file: %s holds no PEM certificate", bs.CAFile)
		}
	}
	src := &bundlestore.URLSource{URL: bs.URL, Client: bundlestore.NewHTTPClient(roots)}
	if bs.Token != "" {
		ref := bs.Token
		src.Token = func() (string, error) { return res.Resolve(ref) }
		if _, err := src.Token(); err != nil {
			return nil, fmt.Errorf("token: %w", err)
		}
	}
	return src, nil
}

// watchBundle keeps the store in step with the configured source until
// ctx ends.
func (g *Gateway) watchBundle(ctx context.Context) {
	if g.bundleURL != nil {
		g.store.WatchURL(ctx, g.bundleURL, g.cfg.Bundle.PollInterval)
		return
	}
	g.store.WatchFile(ctx, g.cfg.Bundle.File, g.cfg.Bundle.PollInterval)
}

// bundleSourceStatus adds a URL source's state to /v1/bundle: the URL
// (redacted; the token is never shown), the ETag of the bundle held, when
// the source last confirmed it and when it is checked next, and the last
// failure.
func (g *Gateway) bundleSourceStatus(status map[string]any) {
	if g.cfg.Bundle.URL == "" {
		return
	}
	st := &g.store.Stats.Source
	status["source_url"] = g.cfg.Bundle.where()
	if e := st.ETag.Load(); e != nil && *e != "" {
		status["etag"] = *e
	}
	status["consecutive_failures"] = st.ConsecutiveFailures.Load()
	status["fetch_failures"] = st.Failures.Load()
	if e := st.Error.Load(); e != nil {
		status["last_fetch_error"] = *e
	}
	for name, t := range map[string]*time.Time{"last_check": st.LastCheck.Load(), "next_check": st.NextCheck.Load(),
		"last_fetch_error_at": st.ErrorAt.Load()} {
		if t != nil {
			status[name] = t.UTC().Format(time.RFC3339Nano)
		}
	}
	if t := g.store.ConfirmedAt(); !t.IsZero() {
		status["stale_seconds"] = time.Since(t).Seconds()
	}
}

// staleBundle says why the active bundle is past admin.max_bundle_age.
func (g *Gateway) staleBundle(a *bundlestore.Active) string {
	age := time.Since(g.store.ConfirmedAt()).Round(time.Second)
	if g.cfg.Bundle.URL == "" {
		return fmt.Sprintf("bundle revision %d was loaded %s ago, over admin.max_bundle_age (%s)", a.Revision, age, g.cfg.Admin.MaxBundleAge)
	}
	msg := fmt.Sprintf("bundle revision %d was last confirmed by %s %s ago, over admin.max_bundle_age (%s)", a.Revision, g.cfg.Bundle.where(), age, g.cfg.Admin.MaxBundleAge)
	if e := g.store.Stats.Source.Error.Load(); e != nil {
		msg += "; last error: " + *e
	}
	return msg
}

// preflightBundle reads the bundle file, or fetches the bundle url once,
// and verifies it against the trusted keys without activating anything.
func preflightBundle(ctx context.Context, bs BundleSource, kr bundle.Keyring, res secrets.Resolver) (what, note string, p *bundle.Payload, err error) {
	what = "bundle " + bs.where()
	if bs.URL == "" {
		p, err = readBundle(bs.File, kr)
		if err != nil {
			return what, "", nil, err
		}
		return what, fmt.Sprintf("revision %d, created %s", p.Revision, p.CreatedAt), p, nil
	}
	src, err := bundleURLSource(bs, res)
	if err != nil {
		return what, "", nil, err
	}
	f, err := src.Fetch(ctx, bundlestore.Validators{})
	if err != nil {
		return what, "", nil, err
	}
	v, err := bundle.Verify(f.Data, kr, bundle.VerifyOptions{})
	if err != nil {
		return what, "", nil, err
	}
	etag := f.ETag
	if etag == "" {
		etag = "none: every poll downloads the bundle"
	}
	return what, fmt.Sprintf("revision %d, created %s, %d bytes, ETag %s", v.Payload.Revision, v.Payload.CreatedAt, len(f.Data), etag), v.Payload, nil
}
