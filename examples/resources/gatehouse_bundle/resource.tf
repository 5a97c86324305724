resource "gatehouse_bundle" "policy" {
  file = "/srv/gatehouse/policy.bundle" # the file gateways watch

  # Each object's spec, keyed by its kind and name (KIND/NAME): a changed
  # object plans as an update of its entry, and errors point at it.
  objects = merge(
    {
      "identity_provider/corp"   = gatehouse_identity_provider.corp.spec
      "identity/billing-service" = gatehouse_identity.billing.spec
      "postgres/orders"          = gatehouse_postgres.orders.spec
      "policy/guardrails"        = gatehouse_policy.guardrails.spec
      "mask/card-number"         = gatehouse_mask.card_number.spec
      "test/nobody may drop"     = gatehouse_policy_test.nobody_may_drop.spec
    },
    module.team_payments.gatehouse_objects, # modules contribute objects by outputting such a map
  )

  # Requests decided against these objects at plan time; check blocks and
  # terraform test assert on the results.
  decisions = {
    billing_drop = {
      identity = "billing-service"
      resource = "orders"
      sql      = "DROP TABLE customers"
    }
  }
}

check "nobody_drops_tables" {
  assert {
    condition     = gatehouse_bundle.policy.decisions["billing_drop"].effect == "deny"
    error_message = "billing-service may DROP: ${join("; ", gatehouse_bundle.policy.decisions["billing_drop"].reasons)}"
  }
}

output "bundle_revision" {
  value = gatehouse_bundle.policy.revision
}
