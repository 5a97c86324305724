data "gatehouse_decision" "billing_drop" {
  objects  = gatehouse_bundle.policy.objects # or bundle_file = "/srv/gatehouse/policy.bundle"
  identity = "billing-service"
  resource = "orders"
  sql      = "DROP TABLE customers"
}

check "nobody_drops_tables" {
  assert {
    condition     = data.gatehouse_decision.billing_drop.effect == "deny"
    error_message = "billing-service may DROP: ${join("; ", data.gatehouse_decision.billing_drop.reasons)}"
  }
}
