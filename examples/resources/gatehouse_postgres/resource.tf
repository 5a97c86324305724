resource "gatehouse_postgres" "orders" {
  name     = "orders"
  address  = "orders-db.internal:5432"
  database = "orders"
  username = "gatehouse"
  password = "env:ORDERS_DB_PASSWORD" # resolved on the gateway host, never stored

  deny_unresolved_columns = true
  labels = {
    env = "prod"
  }

  tls {
    mode    = "verify-full"
    ca_file = "/etc/gatehouse/ca/orders-db.pem"
  }
}
