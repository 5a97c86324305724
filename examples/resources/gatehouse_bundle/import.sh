# A bundle is imported from its file, verified with the provider's keys.
terraform import gatehouse_bundle.policy /srv/gatehouse/policy.bundle
