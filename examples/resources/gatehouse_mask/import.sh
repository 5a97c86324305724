# Objects are imported from a published bundle, verified with the provider's keys: BUNDLE_FILE#NAME.
terraform import gatehouse_mask.card_number '/srv/gatehouse/policy.bundle#card-number'
