resource "gatehouse_postgres" "orders" {
  name     = "orders"
  address  = "orders-db.internal:5432"
  database = "orders"
  username = "gatehouse"
  password = "env:ORDERS_DB_PASSWORD" # resolved on the gateway host, never stored

  # Other sessions' SQL (pg_stat_activity) is hidden from everyone else.
  admins = "'dba' in identity.groups"
  labels = {
    env = "prod"
  }

  tls {
    mode    = "verify-full"
    ca_file = "/etc/gatehouse/ca/orders-db.pem"
  }

  # Each caller's session runs as its own database role: grants apply on
  # top of policy.
  upstream_roles {
    identities = { "analytics-job" = "analytics", "billing-service" = "billing" }
    groups     = { dba = "dba" }
  }
}
