-- Rows for `gatehouse dev`: the orders database the quickstart policy
-- describes. The development environment runs this as the gateway's
-- upstream role, on a throwaway PostgreSQL.
CREATE TABLE customers (
  id          int PRIMARY KEY,
  name        text NOT NULL,
  email       text NOT NULL,
  card_number text
);

CREATE TABLE orders (
  id          serial PRIMARY KEY,
  customer_id int NOT NULL REFERENCES customers,
  total       numeric(10, 2) NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payments (
  id       serial PRIMARY KEY,
  order_id int NOT NULL REFERENCES orders,
  amount   numeric(10, 2) NOT NULL
);

CREATE SCHEMA billing;

CREATE TABLE billing.invoices (
  id       serial PRIMARY KEY,
  order_id int NOT NULL REFERENCES orders,
  amount   numeric(10, 2) NOT NULL,
  issued   date NOT NULL DEFAULT current_date,
  memo     text
);

INSERT INTO customers VALUES
  (1, 'Jane Doe',     'jane.doe@example.com',   '4111 1111 1111 1111'),
  (2, 'Ravi Patel',   'ravi@example.org',       '5500 0000 0000 0004'),
  (3, 'Ana Souza',    'ana.souza@example.net',  NULL);

INSERT INTO orders (customer_id, total, created_at) VALUES
  (1, 120.50, now() - interval '2 hours'),
  (1,  35.00, now() - interval '3 days'),
  (2, 980.00, now() - interval '20 minutes'),
  (3,  12.99, now() - interval '5 hours');

INSERT INTO payments (order_id, amount) VALUES (1, 120.50), (3, 980.00);

INSERT INTO billing.invoices (order_id, amount) VALUES (1, 120.50), (2, 35.00), (3, 980.00);

-- The roles callers run as (upstream_roles in resources.hcl; `gatehouse dev`
-- creates them and makes the gateway's login role a member of each). The
-- database's grants apply on top of the policy: analytics may read orders
-- and customers but not payments, whatever its policy allows.
GRANT USAGE ON SCHEMA public, billing TO analytics, billing;
GRANT SELECT ON customers, orders TO analytics;
GRANT SELECT ON ALL TABLES IN SCHEMA public, billing TO billing;
GRANT INSERT, UPDATE, DELETE ON payments, billing.invoices TO billing;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public, billing TO billing;

-- Statistics, as autovacuum would gather them on a real database: the
-- gateway must not let them show masked values.
ANALYZE;
