resource "gatehouse_policy" "guardrails" {
  name      = "guardrails"
  resources = [gatehouse_postgres.orders.name]
  everyone  = true

  rule {
    name   = "no-drop-or-truncate"
    effect = "deny"
    when   = "request.statements.exists(s, s.command.startsWith('DROP ') || s.command == 'TRUNCATE')"
    reason = "nobody may DROP or TRUNCATE through the gateway"
  }

  rule {
    name   = "payments-need-review"
    effect = "review"
    when   = "request.statements.exists(s, s.tables.exists(t, t.name == 'payments' && t.access == 'write'))"
    reason = "writes to payments need a DBA's approval"

    approval {
      groups  = ["dba"]
      count   = 1
      timeout = "30m"
    }
  }
}
