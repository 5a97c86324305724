# What they may call. Credentials are references: the gateway resolves them
# at run time, and no secret value ever enters the bundle.
postgres "orders" {
  description = "Orders, customers and payments (public) plus the billing schema"
  address     = "orders-db.internal:5432"
  database    = "orders"
  username    = "gatehouse"
  password    = "env:ORDERS_DB_PASSWORD"
  labels = {
    env  = "prod"
    team = "billing"
  }

  tls {
    mode    = "verify-full"
    ca_file = "/etc/gatehouse/ca/orders-db.pem"
  }
}

ssh_host "bastion" {
  description = "Operations bastion"
  address     = "bastion.internal:22"
  user        = "ops"
  host_key    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOEUTqBqeZQjtMndz1LphtYO5IcPCLaCN3hxN0yK1Sen"
  private_key = "file:/etc/gatehouse/keys/bastion_ed25519"
  labels = {
    env = "prod"
  }
}

kubernetes_cluster "prod-cluster" {
  description = "Production cluster API"
  server      = "https://k8s.internal:6443"
  token       = "k8s:gatehouse/prod-cluster-token#token"
  ca_file     = "/etc/gatehouse/ca/prod-cluster.pem"
  labels = {
    env = "prod"
  }
}
