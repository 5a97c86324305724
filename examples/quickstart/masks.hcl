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

# On a cluster, a mask names object fields: a Secret's values come back
# masked in get, list and watch, for every caller the unless does not lift.
# It keeps values out of reads, screens and recordings; a caller who may
# exec into pods or create them can still read a Secret a pod mounts
# (docs/kubernetes.md, "What masking does not cover").
mask "secret-values" {
  description = "Secret values are for the security team only"
  resources   = ["prod-cluster"]
  fields      = ["secrets/data", "secrets/stringData"]
  method      = "redact"
  unless      = "'security' in identity.groups"
}
