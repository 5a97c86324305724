resource "gatehouse_mask" "card_number" {
  name      = "card-number"
  resources = [gatehouse_postgres.orders.name]
  columns   = ["customers.card_number"]
  method    = "redact"
  unless    = "'pci' in identity.groups"
}

# A mask of Kubernetes object fields: Secret values in API responses.
resource "gatehouse_mask" "secret_values" {
  name      = "secret-values"
  resources = [gatehouse_kubernetes_cluster.prod.name]
  fields    = ["secrets/data", "secrets/stringData"]
  method    = "redact"
  unless    = "'secret-admins' in identity.groups"
}
