# Who may call. Tokens are verified against this issuer; the audience must be
# "gatehouse" so that a token minted for another service is refused.
identity_provider "corp" {
  description  = "The company's OIDC issuer for workloads"
  issuer       = "https://id.example.com"
  audiences    = ["gatehouse"]
  groups_claim = "groups"
}

# The billing service has a client-credentials client whose subject is fixed.
identity "billing-service" {
  description = "Creates invoices and records payments"
  provider    = "corp"
  subject     = "billing-service"
  groups      = ["billing"]
}

# The nightly analytics job runs as several pods; each gets its own subject,
# so the identity is matched by a predicate over the verified token.
identity "analytics-job" {
  description = "Nightly reporting; reads everything, changes nothing"
  provider    = "corp"
  match       = "identity.subject.startsWith('analytics-') && identity.claims.?env.orValue('') == 'prod'"
  groups      = ["analytics"]
}
