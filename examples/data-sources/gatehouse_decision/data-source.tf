# Decide against the bundle gateways have now. To check the policy a
# gatehouse_bundle is about to publish, use its decisions instead: they are
# decided at plan time, against the planned objects.
data "gatehouse_decision" "billing_drop" {
  bundle_file = "/srv/gatehouse/policy.bundle"
  identity    = "billing-service"
  resource    = "orders"
  sql         = "DROP TABLE customers"
}

check "published_bundle_denies_drops" {
  assert {
    condition     = data.gatehouse_decision.billing_drop.effect == "deny"
    error_message = "billing-service may DROP: ${join("; ", data.gatehouse_decision.billing_drop.reasons)}"
  }
}
