# Decisions the policy must keep making, checked on every plan and apply
# (check blocks warn) and asserted by `terraform test` (tests/*.tftest.hcl).
# gatehouse_bundle.policy decides the requests of decisions.auto.tfvars
# against the objects it is about to publish, at plan time, the way the
# gateway will; the plan shows a result only when it changes.

check "nobody_drops_tables" {
  assert {
    condition     = gatehouse_bundle.policy.decisions["billing_drop"].effect == "deny"
    error_message = "billing-service may DROP a table: ${join("; ", gatehouse_bundle.policy.decisions["billing_drop"].reasons)}"
  }
}

check "card_numbers_are_masked" {
  assert {
    condition     = lookup(gatehouse_bundle.policy.decisions["analytics_read"].masks, "public.customers.card_number", "") == "redact"
    error_message = "analytics-job reads card numbers unmasked"
  }
}
