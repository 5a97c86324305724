package ssh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// upstream is the gateway's own SSH connection to the resource, logged in
// with the credential the bundle references.
type upstream struct {
	client *gossh.Client
	err    error
}

// upstream connects upstream once, at the first channel or forward that
// needs it. A failure is remembered: every later attempt gets it.
func (c *conn) upstream(ctx context.Context) (*gossh.Client, error) {
	c.upMu.Lock()
	defer c.upMu.Unlock()
	if c.up == nil {
		client, err := c.srv.dial(ctx, c.cs.Resource(), c.cs.Identity().Name)
		c.up = &upstream{client: client, err: err}
		if err != nil {
			c.log.Error("upstream connection failed", "err", err)
		} else {
			c.relayUpstreamChannels(ctx, client)
		}
	}
	return c.up.client, c.up.err
}

func (c *conn) closeUpstream() {
	c.upMu.Lock()
	defer c.upMu.Unlock()
	if c.up != nil && c.up.client != nil {
		c.up.client.Close()
	}
	if c.up == nil {
		c.up = &upstream{err: errors.New("the session has ended")}
	}
}

// HostKeyMismatch is the error of an upstream whose host key is not the
// pinned one. It names both fingerprints, so an operator can tell a
// rotated key from an impostor.
type HostKeyMismatch struct {
	Resource, Expected, Offered string
}

func (e *HostKeyMismatch) Error() string {
	return fmt.Sprintf("the host key of %q is not the pinned one: expected %s, offered %s (if the host's key was rotated, update the ssh_host's host_key)",
		e.Resource, e.Expected, e.Offered)
}

// dial logs in to the resource with the credentials the bundle
// references, resolved now on the gateway host. The upstream's host key
// must be exactly the pinned one.
func (s *Server) dial(ctx context.Context, resource, identity string) (*gossh.Client, error) {
	var res *bundle.SSHHost
	model := &s.core.Bundles().Current().Payload.Model
	for i := range model.SSHHosts {
		if model.SSHHosts[i].Name == resource {
			res = &model.SSHHosts[i]
		}
	}
	if res == nil {
		return nil, fmt.Errorf("%q is no longer an ssh_host of the active bundle", resource)
	}
	pinned, _, _, _, err := gossh.ParseAuthorizedKey([]byte(res.HostKey))
	if err != nil {
		return nil, fmt.Errorf("the pinned host_key of %q does not parse: %w", resource, err)
	}
	auth, err := s.credentials(res)
	if err != nil {
		return nil, err
	}
	cfg := &gossh.ClientConfig{
		User: res.User, Auth: auth, Timeout: s.cfg.UpstreamTimeout, ClientVersion: "SSH-2.0-Gatehouse",
		HostKeyAlgorithms: hostKeyAlgorithms(pinned),
		HostKeyCallback: func(_ string, _ net.Addr, offered gossh.PublicKey) error {
			if !bytes.Equal(offered.Marshal(), pinned.Marshal()) {
				return &HostKeyMismatch{Resource: resource, Expected: gossh.FingerprintSHA256(pinned), Offered: gossh.FingerprintSHA256(offered)}
			}
			return nil
		},
	}
	dctx, cancel := context.WithTimeout(ctx, s.cfg.UpstreamTimeout)
	defer cancel()
	nc, err := (&net.Dialer{}).DialContext(dctx, "tcp", res.Address)
	if err != nil {
		return nil, fmt.Errorf("cannot reach %q at %s: %w", resource, res.Address, err)
	}
	sc, chans, reqs, err := gossh.NewClientConn(nc, res.Address, cfg)
	if err != nil {
		nc.Close()
		var mismatch *HostKeyMismatch
		if errors.As(err, &mismatch) {
			return nil, mismatch
		}
		return nil, fmt.Errorf("cannot log in to %q as %s: %w", resource, res.User, err)
	}
	return gossh.NewClient(sc, chans, reqs), nil
}

// credentials resolves the resource's key or password. Errors name the
// reference, never the value.
func (s *Server) credentials(res *bundle.SSHHost) ([]gossh.AuthMethod, error) {
	var out []gossh.AuthMethod
	if res.PrivateKey != "" {
		pem, err := s.secrets.Resolve(res.PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("the private_key of %q: %w", res.Name, err)
		}
		signer, err := gossh.ParsePrivateKey([]byte(pem))
		if err != nil {
			return nil, fmt.Errorf("the private_key of %q (%s) is not an unencrypted OpenSSH or PEM private key", res.Name, res.PrivateKey)
		}
		out = append(out, gossh.PublicKeys(signer))
	}
	if res.Password != "" {
		pw, err := s.secrets.Resolve(res.Password)
		if err != nil {
			return nil, fmt.Errorf("the password of %q: %w", res.Name, err)
		}
		out = append(out, gossh.Password(pw))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("ssh_host %q has no private_key or password", res.Name)
	}
	return out, nil
}

// splice copies two channels into each other until both directions end.
func splice(a, b gossh.Channel) (ab, ba int64) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		ab, _ = io.Copy(b, a)
		_ = b.CloseWrite()
	}()
	go func() {
		defer wg.Done()
		ba, _ = io.Copy(a, b)
		_ = a.CloseWrite()
	}()
	wg.Wait()
	a.Close()
	b.Close()
	return ab, ba
}

// hostKeyAlgorithms are the signature algorithms a pinned key's type is
// offered with (an RSA key signs with SHA-2; ssh-rsa's SHA-1 is refused by
// current servers).
func hostKeyAlgorithms(k gossh.PublicKey) []string {
	if k.Type() == gossh.KeyAlgoRSA {
		return []string{gossh.KeyAlgoRSASHA512, gossh.KeyAlgoRSASHA256}
	}
	return []string{k.Type()}
}
