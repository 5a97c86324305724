# Objects are imported from a published bundle, verified with the provider's keys: BUNDLE_FILE#NAME.
terraform import gatehouse_policy.guardrails '/srv/gatehouse/policy.bundle#guardrails'
