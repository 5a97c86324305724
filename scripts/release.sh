#!/usr/bin/env bash
# Build a release into DIST (default dist/): for each platform, the gatehouse
# binary as a tarball, the Terraform provider packaged as the registry
# protocol expects, an SPDX SBOM; then SHA256SUMS over everything and an
# ed25519 signature over SHA256SUMS.
#
#   scripts/release.sh VERSION            (make release VERSION=x.y.z)
#
# Environment:
#   PLATFORMS    space-separated os/arch (default "linux/amd64 linux/arm64").
#                pg_query_go needs cgo, so each platform needs a C cross
#                compiler: linux/arm64 uses aarch64-linux-gnu-gcc (apt:
#                gcc-aarch64-linux-gnu, installed when missing). darwin has no
#                cross toolchain here and is not built.
#   RELEASE_KEY  the project's ed25519 release key (PEM, from gatehouse keygen).
#                Without it, a throwaway key is made in DIST and said so: the
#                signature then proves nothing about who built it.
#   DIST         output directory.
#   GATEHOUSE    a gatehouse binary for this host, to make a throwaway key
#                (default bin/gatehouse; make release builds it).
set -euo pipefail

VERSION="${1:?usage: scripts/release.sh VERSION (semantic, like 1.2.3)}"
VERSION="${VERSION#v}"
if ! [[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]]; then
  echo "release: $VERSION is not a semantic version (MAJOR.MINOR.PATCH[-PRE])" >&2
  exit 2
fi
PLATFORMS="${PLATFORMS:-linux/amd64 linux/arm64}"
DIST="${DIST:-dist}"
GO="${GO:-go}"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
LDFLAGS="-s -w -X github.com/gatehouse-dev/gatehouse/cli.version=$VERSION -X github.com/gatehouse-dev/gatehouse/cli.commit=$COMMIT"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

dist_abs="$(realpath -m "$DIST")"
case "$dist_abs" in
  /|"$(realpath -m "${HOME:-/}")"|"$(realpath -m "$PWD")"|/usr|/etc|/var|/tmp)
    echo "release: DIST=$DIST would be emptied; give it a directory of its own" >&2; exit 2 ;;
esac
rm -rf "$DIST"
mkdir -p "$DIST"
step() { printf '==> %s\n' "$*"; }

for platform in $PLATFORMS; do
  os="${platform%/*}"; arch="${platform#*/}"
  host="$($GO env GOOS)/$($GO env GOARCH)"
  cc=""
  if [ "$platform" != "$host" ]; then
    case "$platform" in
      linux/arm64) cc=aarch64-linux-gnu-gcc
        command -v "$cc" >/dev/null || { step "installing gcc-aarch64-linux-gnu (cgo cross compiler)"; $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gcc-aarch64-linux-gnu >/dev/null; } ;;
      linux/amd64) cc=x86_64-linux-gnu-gcc ;;
      *) echo "release: no cgo cross compiler for $platform here (pg_query_go needs cgo)" >&2; exit 2 ;;
    esac
  fi
  step "gatehouse $VERSION for $os/$arch"
  work="$DIST/.build/${os}_${arch}"
  mkdir -p "$work"
  CGO_ENABLED=1 GOOS="$os" GOARCH="$arch" ${cc:+CC=$cc} \
    $GO build -trimpath -buildvcs=false -ldflags "$LDFLAGS" -o "$work/gatehouse" .
  # The CLI and gateway.
  tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
    -czf "$DIST/gatehouse_${VERSION}_${os}_${arch}.tar.gz" gatehouse
  # The provider, as the registry protocol (and mirrors) want it: a zip of
  # terraform-provider-NAME_vVERSION.
  cp "$work/gatehouse" "$work/terraform-provider-gatehouse_v${VERSION}"
  touch -d "@$SOURCE_DATE_EPOCH" "$work/terraform-provider-gatehouse_v${VERSION}"
  (cd "$work" && TZ=UTC zip -q -X -D "terraform-provider-gatehouse_${VERSION}_${os}_${arch}.zip" "terraform-provider-gatehouse_v${VERSION}")
  mv "$work/terraform-provider-gatehouse_${VERSION}_${os}_${arch}.zip" "$DIST/"
  $GO run ./internal/sbom "$work/gatehouse" "$VERSION" > "$DIST/gatehouse_${VERSION}_${os}_${arch}.spdx.json"
done
rm -rf "$DIST/.build"

step "provider manifest and checksums (registry protocol)"
printf '{\n  "version": 1,\n  "metadata": {\n    "protocol_versions": ["6.0"]\n  }\n}\n' > "$DIST/terraform-provider-gatehouse_${VERSION}_manifest.json"
(cd "$DIST" && sha256sum terraform-provider-gatehouse_"${VERSION}"_*.zip terraform-provider-gatehouse_"${VERSION}"_manifest.json \
  > "terraform-provider-gatehouse_${VERSION}_SHA256SUMS")

step "SHA256SUMS and its signature"
(cd "$DIST" && sha256sum $(ls | grep -v '^SHA256SUMS' | sort) > SHA256SUMS)
key="${RELEASE_KEY:-}"
if [ -z "$key" ]; then
  echo "note: RELEASE_KEY is not set: signing with a throwaway key made for this build (it proves nothing about who built it)"
  "${GATEHOUSE:-bin/gatehouse}" keygen --out "$DIST/.throwaway-key" >/dev/null
  key="$DIST/.throwaway-key/gatehouse.key"
  cp "$DIST/.throwaway-key/gatehouse.pub" "$DIST/release-key.pub"
  rm -f "$DIST/.throwaway-key/gatehouse.pub"
else
  openssl pkey -in "$key" -pubout -out "$DIST/release-key.pub"
fi
openssl pkeyutl -sign -rawin -inkey "$key" -in "$DIST/SHA256SUMS" -out "$DIST/SHA256SUMS.sig"
rm -rf "$DIST/.throwaway-key"
openssl pkeyutl -verify -rawin -pubin -inkey "$DIST/release-key.pub" -in "$DIST/SHA256SUMS" -sigfile "$DIST/SHA256SUMS.sig" >/dev/null

step "release $VERSION in $DIST:"
ls -1 "$DIST" | sed 's/^/  /'
cat <<TXT
Verify:
  cd $DIST && sha256sum -c SHA256SUMS
  openssl pkeyutl -verify -rawin -pubin -inkey release-key.pub -in SHA256SUMS -sigfile SHA256SUMS.sig
TXT
