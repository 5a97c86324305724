# Objects are imported from a published bundle, verified with the provider's keys: BUNDLE_FILE#NAME.
terraform import gatehouse_identity.billing '/srv/gatehouse/policy.bundle#billing-service'
