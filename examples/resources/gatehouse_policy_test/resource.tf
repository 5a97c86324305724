resource "gatehouse_policy_test" "nobody_may_drop" {
  name         = "nobody may drop"
  identity     = gatehouse_identity.billing.name
  resource     = gatehouse_postgres.orders.name
  sql          = "DROP TABLE orders"
  expect       = "deny"
  expect_rules = ["guardrails/no-drop-or-truncate"]
}

resource "gatehouse_policy_test" "analytics_may_connect" {
  name     = "analytics may connect"
  identity = gatehouse_identity.analytics.name
  subject  = "analytics-7f9c"
  claims   = jsonencode({ env = "prod" })
  resource = gatehouse_postgres.orders.name
  request  = jsonencode({ kind = "connect" })
  expect   = "allow"
}
