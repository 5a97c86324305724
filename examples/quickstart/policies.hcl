# Guardrails cover every caller of the orders database. A matching deny wins
# over any allow elsewhere, so these hold whatever other policies say.
policy "guardrails" {
  description = "What nobody may do on the orders database"
  resources   = ["orders"]
  everyone    = true

  rule "no-drop-or-truncate" {
    effect = "deny"
    when   = "request.statements.exists(s, s.command.startsWith('DROP ') || s.command == 'TRUNCATE')"
    reason = "nobody may DROP or TRUNCATE through the gateway"
  }

  rule "no-unfiltered-writes" {
    effect = "deny"
    when   = "request.statements.exists(s, s.command in ['DELETE', 'UPDATE'] && !s.has_where)"
    reason = "DELETE and UPDATE need a WHERE clause that filters on a column"
  }

  rule "no-procedural-code" {
    effect = "deny"
    when   = "request.statements.exists(s, s.command in ['DO', 'CREATE FUNCTION', 'CREATE PROCEDURE'])"
    reason = "anonymous code blocks and new functions can run anything"
  }

  rule "no-copy-program" {
    effect = "deny"
    when   = "request.statements.exists(s, s.command == 'COPY' && s.copy_target != 'stdio')"
    reason = "COPY to or from a program or a server file runs on the database host"
  }

  rule "no-role-switching" {
    effect = "deny"
    when   = <<-CEL
      request.statements.exists(s,
        (s.command != 'SHOW' && s.setting in ['role', 'session_authorization']) ||
        'set_config' in s.functions)
    CEL
    reason = "switching roles would escape the gateway's upstream role"
  }

  # With standard_conforming_strings off, or a client encoding such as SJIS,
  # PostgreSQL reads the same bytes as other statements than the ones the
  # gateway parsed. SET, ALTER ROLE/DATABASE/SYSTEM ... SET are all routes.
  rule "no-parser-settings" {
    effect = "deny"
    when   = "request.statements.exists(s, s.command != 'SHOW' && s.setting in ['standard_conforming_strings', 'client_encoding', 'all'])"
    reason = "changing how text is parsed would let SQL hide statements"
  }

  rule "no-catalog-writes" {
    effect = "deny"
    when   = "request.statements.exists(s, s.tables.exists(t, t.schema == 'pg_catalog' && t.access == 'write'))"
    reason = "the system catalogs change only through PostgreSQL's own commands"
  }

  rule "no-server-configuration" {
    effect = "deny"
    when   = "request.statements.exists(s, s.command in ['ALTER SYSTEM', 'LOAD'])"
    reason = "server configuration and shared libraries are managed outside the gateway"
  }

  rule "no-server-side-files" {
    effect = "deny"
    when   = "request.statements.exists(s, s.functions.exists(f, f in ['lo_export', 'lo_import', 'pg_read_file', 'pg_read_binary_file', 'pg_ls_dir']))"
    reason = "server-side file access is not allowed"
  }

  rule "payments-need-review" {
    effect = "review"
    when   = "request.statements.exists(s, s.tables.exists(t, t.schema == 'public' && t.name == 'payments' && t.access == 'write'))"
    reason = "writes to payments need a DBA's approval"

    approval {
      groups  = ["dba"]
      count   = 1
      timeout = "30m"
    }
  }
}

policy "analytics-read-only" {
  description = "The analytics job reads and changes nothing"
  resources   = ["orders"]
  identities  = ["analytics-job"]

  # A connection has no statements, so all() holds and the job may connect.
  # Reading means SELECT (or SHOW, EXPLAIN) of tables, no row locks, and no
  # function with side effects: PostgreSQL declares every function's
  # volatility, and one declared STABLE or IMMUTABLE cannot change data,
  # while a SELECT can call setval(), lo_import() or pg_terminate_backend(),
  # which are VOLATILE. Functions that are not built in count as volatile
  # until the gateway has read their declaration from the database. The
  # allow-list holds read-only built-ins PostgreSQL declares VOLATILE
  # anyway: psql's \d and \dt+ call them.
  rule "read" {
    effect = "allow"
    when   = <<-CEL
      request.statements.all(s,
        s.command in ['SELECT', 'EXPLAIN', 'SHOW', 'BEGIN', 'COMMIT', 'ROLLBACK'] &&
        s.tables.all(t, t.access == 'read') &&
        s.locking == '' &&
        s.volatile_functions.all(f, f in ['random', 'pg_partition_ancestors', 'pg_table_size', 'pg_relation_size', 'pg_total_relation_size']))
    CEL
    reason = "analytics may run read-only queries"
  }
}

policy "billing-service" {
  description = "Billing reads everything and writes billing tables"
  resources   = ["orders"]
  identities  = ["billing-service"]

  rule "read" {
    effect = "allow"
    when   = <<-CEL
      request.statements.all(s,
        s.command in ['SELECT', 'SHOW', 'BEGIN', 'COMMIT', 'ROLLBACK'] &&
        s.tables.all(t, t.access == 'read') &&
        s.functions.all(f, f in ['count', 'sum', 'avg', 'min', 'max', 'now', 'date_trunc', 'lower', 'upper', 'round', 'coalesce']))
    CEL
    reason = "billing may read"
  }

  rule "write-billing-tables" {
    effect = "allow"
    when   = <<-CEL
      request.statements.all(s,
        s.command in ['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'BEGIN', 'COMMIT', 'ROLLBACK'] &&
        s.tables.all(t, t.access == 'read' || t.schema == 'billing' || (t.schema == 'public' && t.name == 'payments')) &&
        s.functions.all(f, f in ['count', 'sum', 'now', 'round', 'coalesce']))
    CEL
    reason = "billing may write the billing schema and payments"
  }
}

policy "dba" {
  description = "DBAs may run anything the guardrails allow"
  resources   = ["orders"]
  groups      = ["dba"]

  rule "administer" {
    effect = "allow"
    reason = "DBAs administer the orders database"
  }
}

policy "bastion-ops" {
  description = "Operators may run a few diagnostics on the bastion"
  resources   = ["bastion"]
  groups      = ["dba"]

  rule "connect" {
    effect = "allow"
    on     = ["connect"]
    reason = "DBAs may open sessions on the bastion"
  }

  rule "diagnostics" {
    effect = "allow"
    on     = ["exec"]
    when   = "request.command in ['uptime', 'df -h', 'free -m']"
    reason = "read-only diagnostics"
  }

  rule "no-destructive" {
    effect = "deny"
    on     = ["exec"]
    when   = "!request.simple || request.argv[0] in ['rm', 'dd', 'mkfs', 'shutdown', 'reboot', 'kill']"
    reason = "destructive or compound commands are not run through the bastion"
  }

  rule "no-forwarding" {
    effect = "deny"
    on     = ["forward", "remote_forward"]
    reason = "port forwarding through the bastion is not allowed"
  }
}

policy "cluster-readers" {
  description = "Analytics may read workloads, never secrets"
  resources   = ["prod-cluster"]
  identities  = ["analytics-job"]

  rule "read-workloads" {
    effect = "allow"
    when   = "request.verb in ['get', 'list', 'watch'] && request.subresource == '' && request.resource != 'secrets'"
    reason = "analytics may read cluster state"
  }

  rule "no-secrets" {
    effect = "deny"
    when   = "request.resource == 'secrets'"
    reason = "analytics never reads secrets"
  }
}

policy "cluster-discovery" {
  description = "kubectl reads the API's discovery documents before anything else"
  resources   = ["prod-cluster"]
  everyone    = true

  rule "discovery" {
    effect = "allow"
    when   = "request.verb in ['get', 'head'] && (request.path in ['/api', '/apis', '/version'] || request.path.startsWith('/api/') || request.path.startsWith('/apis/') || request.path.startsWith('/openapi/'))"
    reason = "API discovery (/api, /apis, /version, /openapi) describes the API, not its objects"
  }
}

policy "cluster-operators" {
  description = "Operators run the cluster; deletes in prod wait for a second operator"
  resources   = ["prod-cluster"]
  groups      = ["dba"]

  rule "operate" {
    effect = "allow"
    reason = "operators may read, change and exec in workloads"
  }

  rule "prod-deletes" {
    effect = "review"
    when   = "request.verb in ['delete', 'deletecollection'] && request.namespace == 'prod'"
    reason = "deleting in the prod namespace needs a second operator"
    approval {
      groups  = ["dba"]
      timeout = "15m"
    }
  }
}
