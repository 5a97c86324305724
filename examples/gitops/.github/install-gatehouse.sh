#!/usr/bin/env bash
# Install a pinned gatehouse release on a CI runner, verified: SHA256SUMS
# must be signed by the release key committed next to this script, and the
# downloaded files must match it. The provider zip goes into Terraform's
# implied local mirror, so `terraform init` installs it (and records its
# hash in .terraform.lock.hcl) without the registry.
#
# GATEHOUSE_RELEASES (the releases' base URL, HTTPS) and BINDIR (default
# /usr/local/bin) can be changed; the acceptance tests serve a release
# built in the test.
set -euo pipefail
: "${GATEHOUSE_VERSION:?set GATEHOUSE_VERSION (for example 0.1.0)}"
os=linux
arch=$(uname -m); case "$arch" in x86_64) arch=amd64;; aarch64) arch=arm64;; esac
base="${GATEHOUSE_RELEASES:-https://github.com/gatehouse-dev/gatehouse/releases/download}/v${GATEHOUSE_VERSION}"
key="$(cd "$(dirname "$0")" && pwd)/gatehouse-release-key.pub"
bindir="${BINDIR:-/usr/local/bin}"
work="$(mktemp -d)"
cd "$work"
for f in SHA256SUMS SHA256SUMS.sig "gatehouse_${GATEHOUSE_VERSION}_${os}_${arch}.tar.gz" \
         "terraform-provider-gatehouse_${GATEHOUSE_VERSION}_${os}_${arch}.zip"; do
  curl -fsSL --proto =https -o "$f" "$base/$f"
done
openssl pkeyutl -verify -rawin -pubin -inkey "$key" -in SHA256SUMS -sigfile SHA256SUMS.sig
sha256sum -c --ignore-missing SHA256SUMS
tar -xzf "gatehouse_${GATEHOUSE_VERSION}_${os}_${arch}.tar.gz" gatehouse
if [ -w "$bindir" ]; then install -m 0755 gatehouse "$bindir/gatehouse"; else sudo install -m 0755 gatehouse "$bindir/gatehouse"; fi
mirror="$HOME/.terraform.d/plugins/registry.terraform.io/gatehouse-dev/gatehouse"
mkdir -p "$mirror"
cp "terraform-provider-gatehouse_${GATEHOUSE_VERSION}_${os}_${arch}.zip" "$mirror/"
"$bindir/gatehouse" version
