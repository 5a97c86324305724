#!/usr/bin/env bash
# Make the gatehouse binary Terraform's provider gatehouse-dev/gatehouse on
# this machine, without a registry: a terraform-provider-gatehouse link next
# to the binary, and a Terraform CLI configuration whose dev_overrides point
# at it. Run it with `make install-provider`.
set -euo pipefail

BIN=${1:-bin/gatehouse}
dir=$(cd "$(dirname "$BIN")" && pwd)
ln -sf "$(basename "$BIN")" "$dir/terraform-provider-gatehouse"
echo "provider: $dir/terraform-provider-gatehouse -> $(basename "$BIN")"

marker="# written by gatehouse's make install-provider"
config="$marker
provider_installation {
  dev_overrides {
    \"gatehouse-dev/gatehouse\" = \"$dir\"
  }
  direct {}
}"

cfg=${TF_CLI_CONFIG_FILE:-$HOME/.terraformrc}
if [ ! -e "$cfg" ] || grep -qF "$marker" "$cfg"; then
  mkdir -p "$(dirname "$cfg")"
  printf '%s\n' "$config" > "$cfg"
  echo "terraform CLI config: $cfg (dev_overrides for gatehouse-dev/gatehouse)"
else
  alt="$PWD/.terraformrc.gatehouse"
  printf '%s\n' "$config" > "$alt"
  echo "$cfg is your own Terraform CLI config; it is left alone. Either add this to it:"
  echo
  sed 's/^/    /' <<<"$config"
  echo
  echo "or use the one written to $alt:"
  echo "    export TF_CLI_CONFIG_FILE=$alt"
fi

# The quickstart signs its bundle with a key of its own.
keys=examples/terraform/quickstart/keys
if [ ! -f "$keys/gatehouse.key" ]; then
  "$BIN" keygen --out "$keys" >/dev/null
  echo "signing key for the Terraform quickstart: $keys/gatehouse.key (kept out of git)"
fi

cat <<EOT

Next:
    terraform -chdir=examples/terraform/quickstart apply
    $BIN bundle verify examples/terraform/quickstart/policy.bundle --trust $keys/gatehouse.pub

With dev_overrides, terraform needs no 'terraform init' for this provider (it warns that overrides are in effect).
EOT
