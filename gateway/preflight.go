package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/gateway/hsm"
	"github.com/gatehouse-dev/gatehouse/gateway/recordstore"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
)

// Check is one preflight check's outcome.
type Check struct {
	What string
	// Err is why it fails; nil when it passes.
	Err error
	// Note says more about a pass (a revision, an expiry).
	Note string
}

// PreflightOptions tune Preflight.
type PreflightOptions struct {
	// Resolver resolves credential references (the zero value reads the
	// environment and files, as the gateway does).
	Resolver secrets.Resolver
	// HTTP fetches identity providers' discovery documents (default: a
	// client with a 5 s timeout).
	HTTP *http.Client
	// Now is the time certificates are checked at (default time.Now).
	Now func() time.Time
}

// Preflight checks what the gateway needs before it serves, without
// starting it or changing anything: the data directory, the TLS
// certificates and keys, the SSH host key, the trusted keys, the bundle
// (read, or fetched once from its url, and verified; not activated), every
// credential reference of the bundle's resources (resolved, never shown),
// the recorder key, and each identity provider's discovery document. `gatehouse gateway --check` prints it.
func Preflight(ctx context.Context, cfg *Config, o PreflightOptions) []Check {
	if o.HTTP == nil {
		o.HTTP = &http.Client{Timeout: 5 * time.Second}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	var out []Check
	add := func(what string, err error, note string) { out = append(out, Check{What: what, Err: err, Note: note}) }

	add("data_dir "+cfg.DataDir, writableDir(cfg.DataDir), "")
	if ref := cfg.State.Postgres; ref != "" {
		note, err := stateCheck(ctx, ref, o.Resolver)
		add("state database "+ref, err, note)
	}
	if pg := cfg.Postgres; pg != nil {
		if pg.TLSCert != "" {
			note, err := certificate(pg.TLSCert, pg.TLSKey, o.Now())
			add("postgres TLS certificate "+pg.TLSCert, err, note)
		} else {
			add("postgres TLS", nil, "none: plaintext on loopback only (insecure_plaintext)")
		}
	}
	if cfg.Admin.TLSCert != "" {
		note, err := certificate(cfg.Admin.TLSCert, cfg.Admin.TLSKey, o.Now())
		add("admin TLS certificate "+cfg.Admin.TLSCert, err, note)
	}
	if kc := cfg.Kubernetes; kc != nil {
		if kc.TLSCert != "" {
			note, err := certificate(kc.TLSCert, kc.TLSKey, o.Now())
			add("kubernetes TLS certificate "+kc.TLSCert, err, note)
		} else {
			certFile, _ := KubernetesTLSPaths(cfg.DataDir)
			add("kubernetes TLS certificate "+certFile, existingOrCreatable(certFile), "self-signed, made on first start")
		}
	}
	if sc := cfg.SSH; sc != nil {
		path := sc.HostKey
		if path == "" {
			path = SSHHostKeyPath(cfg.DataDir)
		}
		add("ssh host key "+path, existingOrCreatable(path), "")
	}
	if hsm.IsURI(cfg.Recorder.Key) {
		_, where, err := recorderKey(cfg)
		add("recorder key "+where, err, "")
	} else {
		path := cfg.Recorder.Key
		if path == "" {
			path = RecorderKeyPath(cfg.DataDir)
		}
		add("recorder key "+path, existingOrCreatable(path), "")
	}

	if bc := cfg.Recorder.Bucket; bc != nil {
		add("recordings bucket "+bc.URL, bucketCheck(ctx, bc, o.Resolver), "")
		if recordstore.IsURL(cfg.Recorder.Anchor) {
			note, err := anchorCheck(ctx, cfg.Recorder, o.Resolver)
			add("recorder anchor "+cfg.Recorder.Anchor, err, note)
		}
		if ref := cfg.State.Postgres; ref != "" {
			note, err := indexCheck(ctx, ref, o.Resolver)
			add("session index in "+ref, err, note)
		}
	}

	kr, err := bundle.LoadKeyring(cfg.Bundle.TrustedKeys...)
	add(fmt.Sprintf("trusted keys (%d)", len(cfg.Bundle.TrustedKeys)), err, "")
	if err != nil {
		return out
	}
	what, note, p, err := preflightBundle(ctx, cfg.Bundle, kr, o.Resolver)
	add(what, err, note)
	if err != nil {
		return out
	}
	for _, ref := range credentialRefs(&p.Model) {
		_, err := o.Resolver.Resolve(ref.ref)
		add(fmt.Sprintf("%s: %s (%s)", ref.owner, ref.field, ref.ref), err, "")
	}
	for _, ip := range p.Model.IdentityProviders {
		add(fmt.Sprintf("identity provider %q discovery", ip.Name), discovery(ctx, o.HTTP, ip.Issuer), ip.Issuer)
	}
	return out
}

// writableDir checks that dir (or the directory that would hold it) can
// be written, without leaving anything behind.
func writableDir(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if errors.Is(err, fs.ErrNotExist) {
			if d == filepath.Dir(d) {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", d)
		}
		f, err := os.CreateTemp(d, ".gatehouse-check-*")
		if err != nil {
			return fmt.Errorf("cannot write in %s: %w", d, err)
		}
		f.Close()
		return os.Remove(f.Name())
	}
}

// existingOrCreatable checks a file the gateway reads, or creates at its
// first start when missing.
func existingOrCreatable(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		if werr := writableDir(filepath.Dir(path)); werr != nil {
			return fmt.Errorf("missing, and it cannot be created: %w", werr)
		}
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return f.Close()
}

// certificate loads a certificate and its key and says when it expires.
func certificate(certFile, keyFile string, now time.Time) (string, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return "", err
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return "", err
	}
	switch {
	case now.After(leaf.NotAfter):
		return "", fmt.Errorf("expired on %s", leaf.NotAfter.UTC().Format(time.DateOnly))
	case now.Before(leaf.NotBefore):
		return "", fmt.Errorf("not valid before %s", leaf.NotBefore.UTC().Format(time.DateOnly))
	}
	note := fmt.Sprintf("%s, valid until %s", strings.Join(leaf.DNSNames, ", "), leaf.NotAfter.UTC().Format(time.DateOnly))
	if leaf.NotAfter.Sub(now) < 30*24*time.Hour {
		note += " (less than 30 days left)"
	}
	return note, nil
}

// readBundle reads and verifies the bundle file, or the last good one in
// the data directory is what the gateway would serve: --check reports the
// file the config names.
func readBundle(path string, kr bundle.Keyring) (*bundle.Payload, error) {
	data, err := bundlestore.ReadFile(path)
	if err != nil {
		return nil, err
	}
	v, err := bundle.Verify(data, kr, bundle.VerifyOptions{})
	if err != nil {
		return nil, err
	}
	return v.Payload, nil
}

type credentialRef struct{ owner, field, ref string }

// credentialRefs lists the bundle's secret references, resource by
// resource.
func credentialRefs(m *bundle.Model) []credentialRef {
	var out []credentialRef
	for _, r := range m.Postgres {
		owner := fmt.Sprintf("postgres %q", r.Name)
		if r.Password != "" {
			out = append(out, credentialRef{owner, "password", r.Password})
		}
		if r.TLS != nil && r.TLS.Key != "" {
			out = append(out, credentialRef{owner, "tls.key", r.TLS.Key})
		}
	}
	for _, r := range m.KubernetesClusters {
		owner := fmt.Sprintf("kubernetes_cluster %q", r.Name)
		if r.Kubeconfig != "" {
			out = append(out, credentialRef{owner, "kubeconfig", r.Kubeconfig})
		}
		if r.Token != "" {
			out = append(out, credentialRef{owner, "token", r.Token})
		}
	}
	for _, r := range m.SSHHosts {
		owner := fmt.Sprintf("ssh_host %q", r.Name)
		if r.PrivateKey != "" {
			out = append(out, credentialRef{owner, "private_key", r.PrivateKey})
		}
		if r.Password != "" {
			out = append(out, credentialRef{owner, "password", r.Password})
		}
	}
	return out
}

// discovery fetches an issuer's OpenID discovery document and checks that
// it names the issuer.
func discovery(ctx context.Context, client *http.Client, issuer string) error {
	url := strings.TrimSuffix(issuer, "/") + "/.well-known/openid-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %s", url, resp.Status)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&doc); err != nil {
		return fmt.Errorf("%s: not a discovery document: %v", url, err)
	}
	if doc.Issuer != issuer {
		return fmt.Errorf("%s names issuer %q, not %q", url, doc.Issuer, issuer)
	}
	if doc.JWKSURI == "" {
		return fmt.Errorf("%s has no jwks_uri", url)
	}
	return nil
}
