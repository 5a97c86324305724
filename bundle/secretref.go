package bundle

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
)

// SecretRef says where the gateway finds a secret at run time. The secret's
// value never enters the model: a bundle is reviewed in pull requests, kept
// in Terraform state and copied to every gateway, so it must be safe to read.
type SecretRef struct {
	// Scheme is "env", "file" or "k8s".
	Scheme string
	// Env is the environment variable name (env:NAME).
	Env string
	// Path is the absolute file path (file:/path).
	Path string
	// Namespace, Secret and Key locate a Kubernetes Secret entry
	// (k8s:namespace/secret#key).
	Namespace, Secret, Key string
}

// ErrInlineSecret reports a value that is not a reference at all: most likely
// the secret itself was pasted into the policy.
var ErrInlineSecret = errors.New("a secret reference is required here, not the secret itself")

// SecretRefHelp explains the accepted forms. It is shown with every secret
// reference error.
const SecretRefHelp = `Write "env:NAME" to read it from the gateway's environment, "file:/absolute/path" ` +
	`to read it from a file on the gateway host, or "k8s:namespace/secret#key" to read a Kubernetes Secret. ` +
	`A value written here would be copied into the bundle, Terraform state and review diffs.`

var (
	envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// DNS-1123 labels and subdomains, as Kubernetes names them.
	k8sNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)
	k8sKeyRE  = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)
)

// ParseSecretRef parses a secret reference. Errors never include the input,
// because the input may be the secret.
func ParseSecretRef(s string) (SecretRef, error) {
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok {
		return SecretRef{}, ErrInlineSecret
	}
	switch scheme {
	case "env":
		if !envNameRE.MatchString(rest) {
			return SecretRef{}, errors.New(`env: must be followed by an environment variable name (letters, digits and _)`)
		}
		return SecretRef{Scheme: scheme, Env: rest}, nil
	case "file":
		if !filepath.IsAbs(rest) || filepath.Clean(rest) != rest {
			return SecretRef{}, errors.New(`file: must be followed by an absolute, clean path (file:/etc/gatehouse/db-password)`)
		}
		return SecretRef{Scheme: scheme, Path: rest}, nil
	case "k8s":
		nsSecret, key, ok := strings.Cut(rest, "#")
		ns, secret, ok2 := strings.Cut(nsSecret, "/")
		if !ok || !ok2 || !k8sNameRE.MatchString(ns) || !k8sNameRE.MatchString(secret) || !k8sKeyRE.MatchString(key) {
			return SecretRef{}, errors.New(`k8s: must be followed by namespace/secret#key (k8s:payments/orders-db#password)`)
		}
		return SecretRef{Scheme: scheme, Namespace: ns, Secret: secret, Key: key}, nil
	}
	return SecretRef{}, ErrInlineSecret
}

func (r SecretRef) String() string {
	switch r.Scheme {
	case "env":
		return "env:" + r.Env
	case "file":
		return "file:" + r.Path
	case "k8s":
		return fmt.Sprintf("k8s:%s/%s#%s", r.Namespace, r.Secret, r.Key)
	}
	return ""
}

// IsSecretRef reports whether s is written as a secret reference (env:,
// file: or k8s:), valid or not.
func IsSecretRef(s string) bool {
	scheme, _, ok := strings.Cut(s, ":")
	return ok && (scheme == "env" || scheme == "file" || scheme == "k8s")
}
