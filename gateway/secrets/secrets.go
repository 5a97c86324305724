// Package secrets resolves the credential references of a bundle (env:NAME,
// file:/path) at run time, on the gateway host. Values live only in the
// gateway's memory: never in the bundle, logs or recordings.
package secrets

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// MaxFileBytes bounds a secret read from a file.
const MaxFileBytes = 64 << 10

// ErrUnsupported is returned for reference schemes this gateway cannot
// resolve yet.
var ErrUnsupported = errors.New("secret reference scheme is not supported by this gateway")

// Resolver resolves references. The zero value reads the real environment
// and file system; tests may set Getenv.
type Resolver struct {
	// Getenv defaults to os.LookupEnv.
	Getenv func(string) (string, bool)
}

// Resolve returns the secret a reference names. Errors name the reference
// (which is not secret) and never the value.
func (r Resolver) Resolve(ref string) (string, error) {
	sr, err := bundle.ParseSecretRef(ref)
	if err != nil {
		return "", fmt.Errorf("secrets: %w", err)
	}
	switch sr.Scheme {
	case "env":
		get := r.Getenv
		if get == nil {
			get = os.LookupEnv
		}
		v, ok := get(sr.Env)
		if !ok || v == "" {
			return "", fmt.Errorf("secrets: %s: environment variable %s is not set on the gateway", ref, sr.Env)
		}
		return v, nil
	case "file":
		fi, err := os.Stat(sr.Path)
		if err != nil {
			return "", fmt.Errorf("secrets: %s: %w", ref, err)
		}
		if !fi.Mode().IsRegular() || fi.Size() > MaxFileBytes {
			return "", fmt.Errorf("secrets: %s: not a regular file of at most %d bytes", ref, MaxFileBytes)
		}
		b, err := os.ReadFile(sr.Path)
		if err != nil {
			return "", fmt.Errorf("secrets: %s: %w", ref, err)
		}
		// Files written by editors and secret stores end with a newline
		// that is not part of the secret.
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	return "", fmt.Errorf("secrets: %s: %w", ref, ErrUnsupported)
}
