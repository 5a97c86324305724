# terraform test: applies the quickstart into a throwaway state (publishing
# the bundle to test.bundle, not the real policy.bundle), asserts the
# bundle's decisions (of decisions.auto.tfvars), and destroys it. `make
# test` runs it with the provider built from this repository.

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
    condition     = gatehouse_bundle.policy.decisions["billing_drop"].effect == "deny"
    error_message = "billing-service may drop tables"
  }
  assert {
    condition     = contains(gatehouse_bundle.policy.decisions["billing_drop"].matched_rules, "guardrails/no-drop-or-truncate")
    error_message = "the DROP was not denied by the guardrail"
  }
}

run "analytics_reads_masked" {
  assert {
    condition     = gatehouse_bundle.policy.decisions["analytics_read"].effect == "allow"
    error_message = "analytics-job may not read customers"
  }
  assert {
    condition     = gatehouse_bundle.policy.decisions["analytics_read"].masks["public.customers.email"] == "partial"
    error_message = "emails are not partly masked for analytics-job"
  }
}
