package cli

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

func newKeygenCmd() *cobra.Command {
	var out string
	var force bool
	cmd := &cobra.Command{
		Use:   "keygen --out DIR",
		Short: "Create an ed25519 key pair for signing bundles",
		Long: `Create an ed25519 signing key pair:

  DIR/gatehouse.key  the private key (PKCS#8 PEM, mode 0600). Whoever holds it can sign policy:
                     keep it in your CI secret store, never in the repository.
  DIR/gatehouse.pub  the public key (PKIX PEM). Gateways trust bundles signed by it.

Existing files are never overwritten unless --force is given. To rotate keys, make a new pair,
add the new .pub to the gateways' trusted keys, then sign with the new key.`,
		Example: `  gatehouse keygen --out keys/
  gatehouse keygen --out /etc/gatehouse/signing --force   # replace an existing pair`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
	return cmd
}
