# Objects are imported from a published bundle, verified with the provider's keys: BUNDLE_FILE#NAME.
terraform import gatehouse_ssh_host.bastion '/srv/gatehouse/policy.bundle#bastion'
