package cli

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/hsm"
	"github.com/gatehouse-dev/gatehouse/gateway/secrets"
)

func newKeygenCmd() *cobra.Command {
	var out, pkcs11URI, pin string
	var force bool
	cmd := &cobra.Command{
		Use:   "keygen --out DIR | --pkcs11 URI --pin REF [--out DIR]",
		Short: "Create an ed25519 key pair for signing bundles, or a recorder key in a PKCS#11 token",
		Long: `Create an ed25519 signing key pair:

  DIR/gatehouse.key  the private key (PKCS#8 PEM, mode 0600). Whoever holds it can sign policy:
                     keep it in your CI secret store, never in the repository.
  DIR/gatehouse.pub  the public key (PKIX PEM). Gateways trust bundles signed by it.

Existing files are never overwritten unless --force is given. To rotate keys, make a new pair,
add the new .pub to the gateways' trusted keys, then sign with the new key.

With --pkcs11, make the gateway's recorder key in a PKCS#11 token instead (a hardware security
module, a cloud HSM, SoftHSM): an ed25519 key pair (CKM_EC_EDWARDS_KEY_PAIR_GEN) whose private half
is sensitive and not extractable, labelled as the URI's object= says. The URI is what the gateway
config's recorder.key takes; --pin is the token's user PIN as env:NAME or file:/path. The public key
is printed, and written as DIR/recorder.pub with --out: keep a copy off the gateway's host for
'gatehouse audit verify --key'. A token that already holds a key with that label is left alone.`,
		Example: `  gatehouse keygen --out keys/
  gatehouse keygen --out /etc/gatehouse/signing --force   # replace an existing pair
  gatehouse keygen --pkcs11 'pkcs11:token=gatehouse;object=recorder?module-path=/usr/lib/softhsm/libsofthsm2.so' \
      --pin env:GATEHOUSE_HSM_PIN --out /secure/gatehouse`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pkcs11URI != "" {
				return keygenPKCS11(cmd.OutOrStdout(), pkcs11URI, pin, out, force)
			}
			if out == "" {
				return errors.New("--out DIR is required")
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return &exitError{code: exitFailure, err: err}
			}
			keyPath := filepath.Join(out, "gatehouse.key")
			pubPath := filepath.Join(out, "gatehouse.pub")
			if !force {
				for _, p := range []string{keyPath, pubPath} {
					if _, err := os.Stat(p); err == nil {
						return failed("%s already exists; refusing to overwrite a key (use --force to replace it)", p)
					} else if !errors.Is(err, fs.ErrNotExist) {
						return failed("%w", err)
					}
				}
			}
			priv, err := bundle.GenerateKey()
			if err != nil {
				return failed("%w", err)
			}
			privPEM, err := bundle.MarshalPrivateKey(priv)
			if err != nil {
				return failed("%w", err)
			}
			pub := priv.Public().(ed25519.PublicKey)
			pubPEM, err := bundle.MarshalPublicKey(pub)
			if err != nil {
				return failed("%w", err)
			}
			if err := bundle.WriteFileAtomic(keyPath, privPEM, 0o600); err != nil {
				return failed("write private key: %v", err)
			}
			if err := bundle.WriteFileAtomic(pubPath, pubPEM, 0o644); err != nil {
				return failed("write public key: %v", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (private, mode 0600)\nwrote %s (public)\nkey id %s\n",
				keyPath, pubPath, bundle.KeyID(pub))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory to write gatehouse.key and gatehouse.pub into (created if missing)")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite existing key files")
	cmd.Flags().StringVar(&pkcs11URI, "pkcs11", "", "make the recorder key in the PKCS#11 token this RFC 7512 URI names")
	cmd.Flags().StringVar(&pin, "pin", "", "with --pkcs11: the token's user PIN, as env:NAME or file:/path")
	return cmd
}

// keygenPKCS11 makes a recorder key in a token and shows its public key.
func keygenPKCS11(w io.Writer, uri, pinRef, out string, force bool) error {
	u, err := hsm.ParseURI(uri)
	if err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	var pin string
	switch {
	case pinRef != "":
		if sr, err := bundle.ParseSecretRef(pinRef); err != nil || (sr.Scheme != "env" && sr.Scheme != "file") {
			return &exitError{code: exitUsage, err: errors.New("--pin must be env:NAME or file:/path, never the PIN itself")}
		}
		pin, err = secrets.Resolver{}.Resolve(pinRef)
	case u.PINSource != "":
		pin, err = hsm.ReadPIN(u.PINSource)
	default:
		return &exitError{code: exitUsage, err: errors.New("--pin env:NAME (or file:/path) is required with --pkcs11")}
	}
	if err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	pubPath := ""
	if out != "" {
		pubPath = filepath.Join(out, "recorder.pub")
		if _, err := os.Stat(pubPath); err == nil && !force {
			return failed("%s already exists; refusing to overwrite it (use --force to replace it)", pubPath)
		}
	}
	pub, err := hsm.Generate(u, pin)
	if err != nil {
		return failed("%w", err)
	}
	pubPEM, err := bundle.MarshalPublicKey(pub)
	if err != nil {
		return failed("%w", err)
	}
	if pubPath != "" {
		if err := os.MkdirAll(out, 0o755); err != nil {
			return failed("%w", err)
		}
		if err := bundle.WriteFileAtomic(pubPath, pubPEM, 0o644); err != nil {
			return failed("write public key: %v", err)
		}
		fmt.Fprintf(w, "wrote %s (public)\n", pubPath)
	}
	fmt.Fprintf(w, "made an ed25519 key in %s\nkey id %s\n%s", u, bundle.KeyID(pub), pubPEM)
	return nil
}
