#!/usr/bin/env bash
# Lay out a release's provider zips (scripts/release.sh) as Terraform
# provider mirrors, for teams that install providers without the registry:
#
#   scripts/provider-mirror.sh DIST OUT
#
# OUT/filesystem  a filesystem mirror (packed layout):
#                   provider_installation { filesystem_mirror { path = "OUT/filesystem" } }
# OUT/network     a network mirror (the provider network mirror protocol's
#                 index.json and VERSION.json beside the zips); serve it over
#                 HTTPS at any URL and use
#                   provider_installation { network_mirror { url = "https://host/path/" } }
set -euo pipefail
DIST="${1:?usage: scripts/provider-mirror.sh DIST OUT}"
OUT="${2:?usage: scripts/provider-mirror.sh DIST OUT}"
HOSTNAME_NS_TYPE="registry.terraform.io/gatehouse-dev/gatehouse"

shopt -s nullglob
zips=("$DIST"/terraform-provider-gatehouse_*_*_*.zip)
[ ${#zips[@]} -gt 0 ] || { echo "no terraform-provider-gatehouse zips in $DIST (run make release)" >&2; exit 2; }
fs="$OUT/filesystem/$HOSTNAME_NS_TYPE"
net="$OUT/network/$HOSTNAME_NS_TYPE"
mkdir -p "$fs" "$net"
declare -A archives
versions=()
for z in "${zips[@]}"; do
  base="$(basename "$z" .zip)"                       # terraform-provider-gatehouse_1.2.3_linux_amd64
  rest="${base#terraform-provider-gatehouse_}"       # 1.2.3_linux_amd64
  version="${rest%%_*}"; platform="${rest#*_}"       # 1.2.3, linux_amd64
  cp "$z" "$fs/"
  cp "$z" "$net/"
  hash="zh:$(sha256sum "$z" | cut -d' ' -f1)"
  archives[$version]+="${archives[$version]:+,}\"$platform\":{\"url\":\"$(basename "$z")\",\"hashes\":[\"$hash\"]}"
  [[ " ${versions[*]} " == *" $version "* ]] || versions+=("$version")
done
index=""
for v in "${versions[@]}"; do
  index+="${index:+,}\"$v\":{}"
  printf '{"archives":{%s}}\n' "${archives[$v]}" > "$net/$v.json"
done
printf '{"versions":{%s}}\n' "$index" > "$net/index.json"
echo "filesystem mirror: $OUT/filesystem"
echo "network mirror:    $OUT/network (serve over HTTPS)"
