# Objects are imported from a published bundle, verified with the provider's keys: BUNDLE_FILE#NAME.
terraform import gatehouse_kubernetes_cluster.prod '/srv/gatehouse/policy.bundle#prod-cluster'
