# Masks apply to results by column origin, so aliases do not escape them.
mask "customer-email" {
  description = "Show only enough of an email to recognise it"
  resources   = ["orders"]
  columns     = ["customers.email"]
  method      = "partial"
}

mask "card-number" {
  description = "Card numbers are for PCI-cleared callers only"
  resources   = ["orders"]
  columns     = ["customers.card_number"]
  method      = "redact"
  unless      = "'pci' in identity.groups"
}
