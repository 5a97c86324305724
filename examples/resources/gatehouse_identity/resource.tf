# A service principal with a fixed subject.
resource "gatehouse_identity" "billing" {
  name              = "billing-service"
  identity_provider = gatehouse_identity_provider.corp.name
  subject           = "billing-service"
  groups            = ["billing"]
}

# Pods with varying subjects, matched by a CEL predicate over the token.
resource "gatehouse_identity" "analytics" {
  name              = "analytics-job"
  identity_provider = gatehouse_identity_provider.corp.name
  match             = "identity.subject.startsWith('analytics-') && identity.claims.?env.orValue('') == 'prod'"
  groups            = ["analytics"]
}
