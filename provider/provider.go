// Package provider is Gatehouse's Terraform provider
// (terraform-plugin-framework, protocol 6). Every object of the policy model
// is a resource with the names of the HCL attributes; gatehouse_bundle
// compiles the objects it is given, runs their tests, signs them and
// publishes the bundle to a file; data sources evaluate decisions and read
// published bundles. Mistakes (CEL type errors with their position inside
// the expression, unknown references, duplicates, inline secrets) surface at
// plan time. No secret value is ever in state: credentials are references,
// and the signing key is read through a reference at apply time.
package provider

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/provider"
	"github.com/hashicorp/terraform-plugin-framework/provider/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// Address is the provider's registry address.
const Address = "registry.terraform.io/gatehouse-dev/gatehouse"

// New returns the provider factory for a version.
func New(version string) func() provider.Provider {
	return func() provider.Provider { return &gatehouseProvider{version: version} }
}

type gatehouseProvider struct{ version string }

// config is what resources and data sources get from the provider block.
type config struct {
	// signingKey is a reference (env: or file:) to the ed25519 signing key.
	signingKey string
	// trustedKeys are public key files that published bundles are checked
	// against; empty means the signing key's public half.
	trustedKeys []string
	// run is what this provider configuration has planned in this run.
	run *registry
}

type providerModel struct {
	SigningKey  types.String `tfsdk:"signing_key"`
	TrustedKeys types.List   `tfsdk:"trusted_keys"`
}

func (p *gatehouseProvider) Metadata(_ context.Context, _ provider.MetadataRequest, resp *provider.MetadataResponse) {
	resp.TypeName = "gatehouse"
	resp.Version = p.version
}

func (p *gatehouseProvider) Schema(_ context.Context, _ provider.SchemaRequest, resp *provider.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "Manage Gatehouse policy as Terraform objects: identity providers, identities, " +
			"resources (PostgreSQL, SSH hosts, Kubernetes clusters), policies with CEL rules, masks and policy tests; " +
			"`gatehouse_bundle` compiles them into a signed bundle file that gateways load. " +
			"The same objects as Gatehouse's HCL policy files, with the same names and the same checks, at `terraform plan`.",
		Attributes: map[string]schema.Attribute{
			"signing_key": schema.StringAttribute{
				Optional:  true,
				Sensitive: true,
				MarkdownDescription: "Where the bundle signing key (an ed25519 PKCS#8 PEM from `gatehouse keygen`) is, as a *reference*: " +
					"`file:/path/gatehouse.key` (the file must be mode 0600) or `env:NAME` (an environment variable holding the PEM). " +
					"Read when a bundle is published; never stored in state. Needed by `gatehouse_bundle`.",
			},
			"trusted_keys": schema.ListAttribute{
				ElementType: types.StringType,
				Optional:    true,
				MarkdownDescription: "Public key files (`gatehouse.pub`) that published bundles are verified against when read " +
					"(the `gatehouse_bundle` data source, imports, `gatehouse_decision` with `bundle_file`). Default: the signing key's public half.",
			},
		},
	}
}

func (p *gatehouseProvider) Configure(ctx context.Context, req provider.ConfigureRequest, resp *provider.ConfigureResponse) {
	var m providerModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	c := &config{signingKey: m.SigningKey.ValueString(), run: newRegistry()}
	if c.signingKey != "" && !strings.HasPrefix(c.signingKey, "env:") && !strings.HasPrefix(c.signingKey, "file:") {
		resp.Diagnostics.AddAttributeError(pathRoot("signing_key"), "signing_key must be a reference",
			"Write `file:/path/to/gatehouse.key` or `env:NAME`, not the key itself: the provider block's value would be in your configuration and plan logs.")
		return
	}
	resp.Diagnostics.Append(m.TrustedKeys.ElementsAs(ctx, &c.trustedKeys, false)...)
	resp.ResourceData, resp.DataSourceData = c, c
}

func (p *gatehouseProvider) Resources(context.Context) []func() resource.Resource {
	var out []func() resource.Resource
	for i := range kinds {
		k := &kinds[i]
		out = append(out, func() resource.Resource { return &objectResource{k: k} })
	}
	return append(out, func() resource.Resource { return &bundleResource{} })
}

func (p *gatehouseProvider) DataSources(context.Context) []func() datasource.DataSource {
	return []func() datasource.DataSource{
		func() datasource.DataSource { return &decisionDataSource{} },
		func() datasource.DataSource { return &bundleDataSource{} },
	}
}

// key resolves the signing key reference.
func (c *config) key() (ed25519.PrivateKey, error) {
	switch {
	case c == nil || c.signingKey == "":
		return nil, fmt.Errorf("the provider has no signing_key: set signing_key = \"file:/path/gatehouse.key\" (or \"env:NAME\") in the provider \"gatehouse\" block")
	case strings.HasPrefix(c.signingKey, "file:"):
		return bundle.LoadPrivateKey(strings.TrimPrefix(c.signingKey, "file:"))
	default:
		name := strings.TrimPrefix(c.signingKey, "env:")
		v, ok := os.LookupEnv(name)
		if !ok || v == "" {
			return nil, fmt.Errorf("signing_key %s: the environment variable %s is not set", c.signingKey, name)
		}
		k, err := bundle.ParsePrivateKey([]byte(v))
		if err != nil {
			return nil, fmt.Errorf("signing_key %s: %w", c.signingKey, err)
		}
		return k, nil
	}
}

// keyring is what published bundles are verified against.
func (c *config) keyring() (bundle.Keyring, error) {
	if c != nil && len(c.trustedKeys) > 0 {
		return bundle.LoadKeyring(c.trustedKeys...)
	}
	k, err := c.key()
	if err != nil {
		return nil, fmt.Errorf("no trusted_keys and %w", err)
	}
	return bundle.NewKeyring(k.Public().(ed25519.PublicKey)), nil
}
