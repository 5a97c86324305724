resource "gatehouse_identity_provider" "corp" {
  name        = "corp"
  description = "The company's OIDC issuer for workloads"
  issuer      = "https://id.example.com"
  audiences   = ["gatehouse"]
}
