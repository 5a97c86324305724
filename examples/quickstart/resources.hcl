# What they may call. Credentials are references: the gateway resolves them
# at run time, and no secret value ever enters the bundle.
postgres "orders" {
  description = "Orders, customers and payments (public) plus the billing schema"
  address     = "orders-db.internal:5432"
  database    = "orders"
  username    = "gatehouse"
  password    = "env:ORDERS_DB_PASSWORD"
  # DBAs see every session's SQL in pg_stat_activity; everyone else sees
  # only that a session exists.
  admins = "'dba' in identity.groups"
  labels = {
    env  = "prod"
    team = "billing"
  }

  tls {
    mode    = "verify-full"
    ca_file = "/etc/gatehouse/ca/orders-db.pem"
  }

  # Each caller's session runs as its own database role (SET ROLE after the
  # gateway logs in as "gatehouse", which is a member of each): the
  # database's grants apply on top of the policy, and callers cannot change
  # the role. DBAs run as the owner.
  upstream_roles {
    identities = {
      "analytics-job"   = "analytics"
      "billing-service" = "billing"
    }
    groups = {
      dba = "gatehouse"
    }
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
