# Decisions the policy must keep making, checked on every plan and apply
# (check blocks warn) and asserted by `terraform test` (tests/*.tftest.hcl).
# gatehouse_decision decides against the objects before they are published,
# the way the gateway will.

data "gatehouse_decision" "billing_drop" {
  objects  = gatehouse_bundle.policy.objects
  identity = gatehouse_identity.billing-service.name
  resource = gatehouse_postgres.orders.name
  sql      = "/* tidy up */ DROP TABLE customers"
}

data "gatehouse_decision" "analytics_read" {
  objects  = gatehouse_bundle.policy.objects
  identity = gatehouse_identity.analytics-job.name
  subject  = "analytics-nightly"
  claims   = jsonencode({ env = "prod" })
  resource = gatehouse_postgres.orders.name
  sql      = "SELECT email, card_number FROM customers"
}

check "nobody_drops_tables" {
  assert {
    condition     = data.gatehouse_decision.billing_drop.effect == "deny"
    error_message = "billing-service may DROP a table: ${join("; ", data.gatehouse_decision.billing_drop.reasons)}"
  }
}

check "card_numbers_are_masked" {
  assert {
    condition     = lookup(data.gatehouse_decision.analytics_read.masks, "public.customers.card_number", "") == "redact"
    error_message = "analytics-job reads card numbers unmasked"
  }
}
