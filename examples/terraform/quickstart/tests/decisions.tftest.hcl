# terraform test: applies the quickstart into a throwaway state (publishing
# the bundle to test.bundle, not the real policy.bundle), asserts decisions,
# and destroys it. `make test` runs it with the provider built from this
# repository.

variables {
  bundle_file = "test.bundle"
}

run "publishes_a_bundle" {
  assert {
    condition     = gatehouse_bundle.policy.revision > 0 && startswith(gatehouse_bundle.policy.digest, "sha256:")
    error_message = "no bundle was published"
  }
}

run "billing_may_not_drop" {
  assert {
    condition     = data.gatehouse_decision.billing_drop.effect == "deny"
    error_message = "billing-service may drop tables"
  }
  assert {
    condition     = contains(data.gatehouse_decision.billing_drop.matched_rules, "guardrails/no-drop-or-truncate")
    error_message = "the DROP was not denied by the guardrail"
  }
}

run "analytics_reads_masked" {
  assert {
    condition     = data.gatehouse_decision.analytics_read.effect == "allow"
    error_message = "analytics-job may not read customers"
  }
  assert {
    condition     = data.gatehouse_decision.analytics_read.masks["public.customers.email"] == "partial"
    error_message = "emails are not partly masked for analytics-job"
  }
}
