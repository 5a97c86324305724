# Objects are imported from a published bundle, verified with the provider's keys: BUNDLE_FILE#NAME.
terraform import gatehouse_policy_test.nobody_may_drop '/srv/gatehouse/policy.bundle#nobody may drop'
