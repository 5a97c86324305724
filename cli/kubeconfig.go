package cli

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientauth "k8s.io/client-go/pkg/apis/clientauthentication/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/gatehouse-dev/gatehouse/gateway/kubernetes"
)

func newKubeconfigCmd() *cobra.Command {
	var gatewayURL, resource, tokenCommand, caFile, out, contextName string
	cmd := &cobra.Command{
		Use:   "kubeconfig --resource NAME --gateway URL [--token-command CMD] [--ca FILE] [--out FILE]",
		Short: "Write a kubeconfig that reaches a cluster through the gateway",
		Long: `Write a kubeconfig for kubectl (or any client-go program) that reaches the bundle's
kubernetes_cluster NAME through the gateway's Kubernetes listener, at URL/k8s/NAME.

kubectl sends an OIDC access token as its bearer token. The kubeconfig gets it from an exec
credential plugin, this binary's kube-credential command, which runs --token-command (with sh -c)
and hands its output to kubectl; without --token-command it reads $GATEHOUSE_TOKEN,
$GATEHOUSE_TOKEN_FILE or $GATEHOUSE_TOKEN_COMMAND when kubectl runs. kubectl caches the token until
its exp claim.

The cluster's own credential stays in the gateway: nothing in this kubeconfig reaches the cluster
directly. --ca pins the gateway listener's certificate (for a self-signed listener, the
DATA_DIR/kubernetes-tls.crt the gateway made); without it the system's roots are used.`,
		Example: `  gatehouse kubeconfig --resource prod-cluster --gateway https://gateway.internal:8443 \
    --token-command 'vault read -field=token auth/oidc/token' --out ~/.kube/gatehouse
  KUBECONFIG=~/.kube/gatehouse kubectl get pods -n web

  # against gatehouse dev (its listener certificate is self-signed):
  gatehouse kubeconfig --resource prod-cluster --gateway https://127.0.0.1:8443 \
    --ca .gatehouse-dev/data/kubernetes-tls.crt --token-command 'cat .gatehouse-dev/tokens/analytics-job'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if resource == "" || gatewayURL == "" {
				return errors.New("--resource and --gateway are required")
			}
			cfg, err := kubeconfigFor(gatewayURL, resource, caFile, tokenCommand, contextName)
			if err != nil {
				return failed("%w", err)
			}
			b, err := clientcmd.Write(*cfg)
			if err != nil {
				return failed("kubeconfig: %w", err)
			}
			if out == "" || out == "-" {
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			if err := os.WriteFile(out, b, 0o600); err != nil {
				return failed("kubeconfig: %w", err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s: KUBECONFIG=%s kubectl get namespaces\n", out, out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&resource, "resource", "", "the bundle's kubernetes_cluster to reach")
	f.StringVar(&gatewayURL, "gateway", "", "the gateway's Kubernetes listener, https://HOST:PORT")
	f.StringVar(&tokenCommand, "token-command", "", "a shell command that prints an OIDC access token")
	f.StringVar(&caFile, "ca", "", "PEM CA certificate(s) the listener's certificate chains to (embedded)")
	f.StringVarP(&out, "out", "o", "", "write to FILE (mode 0600) instead of stdout")
	f.StringVar(&contextName, "context", "", "the context's name (default gatehouse-NAME)")
	return cmd
}

// kubeconfigFor builds the kubeconfig of a cluster behind the gateway.
func kubeconfigFor(gatewayURL, resource, caFile, tokenCommand, contextName string) (*clientcmdapi.Config, error) {
	if !strings.HasPrefix(gatewayURL, "https://") {
		return nil, fmt.Errorf("--gateway %q: the Kubernetes listener is https://HOST:PORT (bearer tokens need TLS)", gatewayURL)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("locating this binary for the credential plugin: %w", err)
	}
	name := contextName
	if name == "" {
		name = "gatehouse-" + resource
	}
	cluster := clientcmdapi.NewCluster()
	cluster.Server = strings.TrimSuffix(gatewayURL, "/") + kubernetes.PathPrefix + resource
	if caFile != "" {
		ca, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		cluster.CertificateAuthorityData = ca
	}
	args := []string{"kube-credential"}
	if tokenCommand != "" {
		args = append(args, "--token-command", tokenCommand)
	}
	user := clientcmdapi.NewAuthInfo()
	user.Exec = &clientcmdapi.ExecConfig{
		APIVersion: "client.authentication.k8s.io/v1", Command: self, Args: args,
		InteractiveMode: clientcmdapi.NeverExecInteractiveMode,
		InstallHint:     "the gatehouse binary runs the token command; install gatehouse (https://github.com/gatehouse-dev/gatehouse)",
	}
	kctx := clientcmdapi.NewContext()
	kctx.Cluster, kctx.AuthInfo = name, name
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = cluster
	cfg.AuthInfos[name] = user
	cfg.Contexts[name] = kctx
	cfg.CurrentContext = name
	return cfg, nil
}

func newKubeCredentialCmd() *cobra.Command {
	var tokenCommand string
	cmd := &cobra.Command{
		Use:   "kube-credential [--token-command CMD]",
		Short: "kubectl's exec credential plugin for the gateway (gatehouse kubeconfig sets it up)",
		Long: `Print an ExecCredential (client.authentication.k8s.io/v1) holding an OIDC access token, for
kubectl's exec credential plugin. The token is the output of --token-command (run with sh -c), or
comes from $GATEHOUSE_TOKEN, $GATEHOUSE_TOKEN_FILE or $GATEHOUSE_TOKEN_COMMAND. Its exp claim,
when it has one, becomes the credential's expirationTimestamp, so kubectl asks again in time.`,
		Example: `  gatehouse kube-credential --token-command 'cat ~/.gatehouse/token'`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var token string
			var err error
			if tokenCommand != "" {
				var out []byte
				out, err = exec.Command("sh", "-c", tokenCommand).Output()
				if err != nil {
					return failed("--token-command: %w", err)
				}
				token = strings.TrimSpace(string(out))
			} else if token, err = askpassToken(); err != nil {
				return failed("%w", err)
			}
			if token == "" {
				return failed("the token command printed no token")
			}
			cred := clientauth.ExecCredential{Status: &clientauth.ExecCredentialStatus{Token: token}}
			cred.APIVersion, cred.Kind = "client.authentication.k8s.io/v1", "ExecCredential"
			if exp, ok := tokenExpiry(token); ok {
				t := metav1Time(exp)
				cred.Status.ExpirationTimestamp = &t
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(cred)
		},
	}
	cmd.Flags().StringVar(&tokenCommand, "token-command", "", "a shell command that prints an OIDC access token")
	return cmd
}

// tokenExpiry reads a JWT's exp claim without verifying anything: only
// to tell kubectl when to ask again (the gateway verifies the token).
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if json.Unmarshal(b, &claims) != nil {
		return time.Time{}, false
	}
	n, err := claims.Exp.Int64()
	if err != nil || n <= 0 {
		return time.Time{}, false
	}
	return time.Unix(n, 0), true
}

func metav1Time(t time.Time) metav1.Time { return metav1.NewTime(t) }
