resource "gatehouse_mask" "card_number" {
  name      = "card-number"
  resources = [gatehouse_postgres.orders.name]
  columns   = ["customers.card_number"]
  method    = "redact"
  unless    = "'pci' in identity.groups"
}
