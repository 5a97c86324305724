#!/usr/bin/env bash
# The policy-as-code quickstart, end to end, on examples/quickstart:
# test the policy, sign a bundle, verify it (and watch tampering fail),
# explain decisions, and diff a policy change. Run it with `make demo`.
set -euo pipefail

GH=${1:-bin/gatehouse}
EX=examples/quickstart
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run()  { printf '$ %s\n' "$*"; "$@"; }

step "Policy files are canonically formatted"
run "$GH" fmt --check "$EX" && echo "(all formatted)"

step "Run the policy tests"
run "$GH" check "$EX"

step "Create a signing key pair"
run "$GH" keygen --out "$WORK/keys"

step "Build a signed bundle (reproducible: SOURCE_DATE_EPOCH and --revision fix its bytes)"
export SOURCE_DATE_EPOCH=1764000000
run "$GH" bundle build "$EX" --key "$WORK/keys/gatehouse.key" --out "$WORK/policy.bundle" --revision 100
run "$GH" bundle build "$EX" --key "$WORK/keys/gatehouse.key" --out "$WORK/again.bundle" --revision 100
cmp "$WORK/policy.bundle" "$WORK/again.bundle" && echo "(two builds are byte-identical)"

step "Verify it as a gateway would"
run "$GH" bundle verify "$WORK/policy.bundle" --trust "$WORK/keys/gatehouse.pub"

step "Tampering, a foreign key, and a rollback are all refused"
python3 - "$WORK/policy.bundle" "$WORK/tampered.bundle" <<'PY' 2>/dev/null || cp "$WORK/policy.bundle" "$WORK/tampered.bundle"
import sys
d = bytearray(open(sys.argv[1], 'rb').read()); d[len(d) // 2] ^= 1
open(sys.argv[2], 'wb').write(d)
PY
run "$GH" bundle verify "$WORK/tampered.bundle" --trust "$WORK/keys/gatehouse.pub" || true
"$GH" keygen --out "$WORK/other" >/dev/null
run "$GH" bundle verify "$WORK/policy.bundle" --trust "$WORK/other/gatehouse.pub" || true
run "$GH" bundle verify "$WORK/policy.bundle" --trust "$WORK/keys/gatehouse.pub" --min-revision 100 || true

step "Explain decisions"
run "$GH" eval "$WORK/policy.bundle" --trust "$WORK/keys/gatehouse.pub" --identity billing-service --resource orders \
  --sql "SELECT email, card_number FROM customers WHERE id = 7"
run "$GH" eval "$EX" --identity billing-service --resource orders --sql "/* tidy up */ DROP TABLE orders"
run "$GH" eval "$EX" --identity billing-service --resource orders --sql "DELETE FROM billing.invoices"
run "$GH" eval "$EX" --identity billing-service --resource orders --sql "INSERT INTO payments (order_id, amount) VALUES (42, 9.5)"

step "What would a change do? Let analytics INSERT into orders, then diff"
cp -r "$EX" "$WORK/widened"
# analytics-read-only/read: also INSERT into orders.
perl -0pi -e "s/\['SELECT', 'EXPLAIN', 'SHOW', 'BEGIN', 'COMMIT', 'ROLLBACK'\] &&\n        s.tables.all\(t, t.access == 'read'\)/['SELECT', 'INSERT', 'EXPLAIN', 'SHOW', 'BEGIN', 'COMMIT', 'ROLLBACK'] &&\n        s.tables.all(t, t.access == 'read' || t.name == 'orders')/" "$WORK/widened/policies.hcl"
run "$GH" bundle diff "$EX" "$WORK/widened"

step "A typo in CEL is caught before anything is signed"
cp -r "$EX" "$WORK/typo"
sed -i "s/'pci' in identity.groups/'pci' in identity.grups/" "$WORK/typo/masks.hcl"
run "$GH" check "$WORK/typo" || true

printf '\nDone. Next: write your own policies (docs/policy-language.md) and run `gatehouse check` in CI.\n'
