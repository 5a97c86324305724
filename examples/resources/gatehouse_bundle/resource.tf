resource "gatehouse_bundle" "policy" {
  file = "/srv/gatehouse/policy.bundle" # the file gateways watch
  objects = concat(
    [
      gatehouse_identity_provider.corp.spec,
      gatehouse_identity.billing.spec,
      gatehouse_postgres.orders.spec,
      gatehouse_policy.guardrails.spec,
      gatehouse_mask.card_number.spec,
      gatehouse_policy_test.nobody_may_drop.spec,
    ],
    module.team_payments.gatehouse_specs, # modules contribute objects by outputting specs
  )
}

output "bundle_revision" {
  value = gatehouse_bundle.policy.revision
}
