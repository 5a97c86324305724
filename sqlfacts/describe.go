package sqlfacts

import (
	"reflect"
	"strings"
	"unicode"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// objectNames spells parse-tree object types the way SQL does.
var objectNames = map[pg.ObjectType]string{
	pg.ObjectType_OBJECT_MATVIEW:         "MATERIALIZED VIEW",
	pg.ObjectType_OBJECT_FOREIGN_TABLE:   "FOREIGN TABLE",
	pg.ObjectType_OBJECT_FOREIGN_SERVER:  "SERVER",
	pg.ObjectType_OBJECT_FDW:             "FOREIGN DATA WRAPPER",
	pg.ObjectType_OBJECT_LARGEOBJECT:     "LARGE OBJECT",
	pg.ObjectType_OBJECT_EVENT_TRIGGER:   "EVENT TRIGGER",
	pg.ObjectType_OBJECT_ACCESS_METHOD:   "ACCESS METHOD",
	pg.ObjectType_OBJECT_STATISTIC_EXT:   "STATISTICS",
	pg.ObjectType_OBJECT_TSCONFIGURATION: "TEXT SEARCH CONFIGURATION",
	pg.ObjectType_OBJECT_TSDICTIONARY:    "TEXT SEARCH DICTIONARY",
	pg.ObjectType_OBJECT_TSPARSER:        "TEXT SEARCH PARSER",
	pg.ObjectType_OBJECT_TSTEMPLATE:      "TEXT SEARCH TEMPLATE",
	pg.ObjectType_OBJECT_USER_MAPPING:    "USER MAPPING",
	pg.ObjectType_OBJECT_OPCLASS:         "OPERATOR CLASS",
	pg.ObjectType_OBJECT_OPFAMILY:        "OPERATOR FAMILY",
	pg.ObjectType_OBJECT_TABCONSTRAINT:   "CONSTRAINT",
	pg.ObjectType_OBJECT_DOMCONSTRAINT:   "CONSTRAINT",
}

func objectName(t pg.ObjectType) string {
	if s, ok := objectNames[t]; ok {
		return s
	}
	s := strings.TrimPrefix(t.String(), "OBJECT_")
	return strings.ReplaceAll(s, "_", " ")
}

var transactionCommands = map[pg.TransactionStmtKind]string{
	pg.TransactionStmtKind_TRANS_STMT_BEGIN:             "BEGIN",
	pg.TransactionStmtKind_TRANS_STMT_START:             "START TRANSACTION",
	pg.TransactionStmtKind_TRANS_STMT_COMMIT:            "COMMIT",
	pg.TransactionStmtKind_TRANS_STMT_ROLLBACK:          "ROLLBACK",
	pg.TransactionStmtKind_TRANS_STMT_SAVEPOINT:         "SAVEPOINT",
	pg.TransactionStmtKind_TRANS_STMT_RELEASE:           "RELEASE",
	pg.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:       "ROLLBACK",
	pg.TransactionStmtKind_TRANS_STMT_PREPARE:           "PREPARE TRANSACTION",
	pg.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED:   "COMMIT PREPARED",
	pg.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED",
}

// describe fills in the statement-level facts of one parse node: its command
// and the facts specific to that command.
func describe(st *Statement, n any) {
	switch x := n.(type) {
	case *pg.SelectStmt:
		st.Command = "SELECT"
		if x.IntoClause != nil {
			// SELECT ... INTO creates a table; it is not a read.
			st.Command = "SELECT INTO"
		}
		st.HasWhere = hasColumnRef(x.WhereClause)
	case *pg.InsertStmt:
		st.Command = "INSERT"
	case *pg.UpdateStmt:
		st.Command = "UPDATE"
		st.HasWhere = hasColumnRef(x.WhereClause)
	case *pg.DeleteStmt:
		st.Command = "DELETE"
		st.HasWhere = hasColumnRef(x.WhereClause)
	case *pg.MergeStmt:
		st.Command = "MERGE"
		st.HasWhere = hasColumnRef(x.JoinCondition)
	case *pg.CreateStmt:
		st.Command = "CREATE TABLE"
	case *pg.CreateTableAsStmt:
		if x.Objtype == pg.ObjectType_OBJECT_MATVIEW {
			st.Command = "CREATE MATERIALIZED VIEW"
		} else {
			st.Command = "CREATE TABLE AS"
		}
	case *pg.DropStmt:
		st.Command = "DROP " + objectName(x.RemoveType)
	case *pg.TruncateStmt:
		st.Command = "TRUNCATE"
	case *pg.AlterTableStmt:
		st.Command = "ALTER " + objectName(x.Objtype)
	case *pg.RenameStmt:
		switch x.RenameType {
		case pg.ObjectType_OBJECT_COLUMN, pg.ObjectType_OBJECT_TABCONSTRAINT, pg.ObjectType_OBJECT_TRIGGER,
			pg.ObjectType_OBJECT_RULE, pg.ObjectType_OBJECT_POLICY, pg.ObjectType_OBJECT_ATTRIBUTE:
			// ALTER TABLE t RENAME COLUMN a TO b is an ALTER TABLE.
			st.Command = "ALTER " + objectName(x.RelationType)
		case pg.ObjectType_OBJECT_DOMCONSTRAINT:
			st.Command = "ALTER DOMAIN"
		default:
			st.Command = "ALTER " + objectName(x.RenameType)
		}
	case *pg.AlterObjectSchemaStmt:
		st.Command = "ALTER " + objectName(x.ObjectType)
	case *pg.AlterOwnerStmt:
		st.Command = "ALTER " + objectName(x.ObjectType)
	case *pg.IndexStmt:
		st.Command = "CREATE INDEX"
	case *pg.ViewStmt:
		st.Command = "CREATE VIEW"
	case *pg.CreateFunctionStmt:
		st.Command = "CREATE FUNCTION"
		if x.IsProcedure {
			st.Command = "CREATE PROCEDURE"
		}
		st.Language = "sql"
		if l, ok := defElemStrings(x.Options, "language"); ok && len(l) > 0 {
			st.Language = strings.ToLower(l[0])
		}
	case *pg.DoStmt:
		st.Command = "DO"
		st.Language = "plpgsql"
		if l, ok := defElemStrings(x.Args, "language"); ok && len(l) > 0 {
			st.Language = strings.ToLower(l[0])
		}
	case *pg.CallStmt:
		st.Command = "CALL"
	case *pg.CopyStmt:
		st.Command = "COPY"
		st.CopyDirection = "to"
		if x.IsFrom {
			st.CopyDirection = "from"
		}
		switch {
		case x.IsProgram:
			st.CopyTarget = "program"
		case x.Filename != "":
			st.CopyTarget = "file"
		default:
			st.CopyTarget = "stdio"
		}
		st.HasWhere = hasColumnRef(x.WhereClause)
	case *pg.VariableSetStmt:
		st.Command = "SET"
		if x.Kind == pg.VariableSetKind_VAR_RESET || x.Kind == pg.VariableSetKind_VAR_RESET_ALL {
			st.Command = "RESET"
		}
		st.Setting = strings.ToLower(x.Name)
		if x.Kind == pg.VariableSetKind_VAR_RESET_ALL {
			st.Setting = "all"
		}
	case *pg.VariableShowStmt:
		st.Command = "SHOW"
		st.Setting = strings.ToLower(x.Name)
	case *pg.TransactionStmt:
		st.Command = transactionCommands[x.Kind]
	case *pg.ExplainStmt:
		st.Command = "EXPLAIN"
	case *pg.PrepareStmt:
		st.Command = "PREPARE"
	case *pg.ExecuteStmt:
		st.Command = "EXECUTE"
	case *pg.DeallocateStmt:
		st.Command = "DEALLOCATE"
	case *pg.GrantStmt:
		st.Command = "GRANT"
		if !x.IsGrant {
			st.Command = "REVOKE"
		}
	case *pg.GrantRoleStmt:
		st.Command = "GRANT ROLE"
		if !x.IsGrant {
			st.Command = "REVOKE ROLE"
		}
	case *pg.VacuumStmt:
		st.Command = "VACUUM"
		if !x.IsVacuumcmd {
			st.Command = "ANALYZE"
		}
	case *pg.LockStmt:
		st.Command = "LOCK TABLE"
	case *pg.DeclareCursorStmt:
		st.Command = "DECLARE CURSOR"
	case *pg.FetchStmt:
		st.Command = "FETCH"
		if x.Ismove {
			st.Command = "MOVE"
		}
	case *pg.ClosePortalStmt:
		st.Command = "CLOSE"
	case *pg.RuleStmt:
		st.Command = "CREATE RULE"
	case *pg.CreateTrigStmt:
		st.Command = "CREATE TRIGGER"
	case *pg.CreatedbStmt:
		st.Command = "CREATE DATABASE"
	case *pg.DropdbStmt:
		st.Command = "DROP DATABASE"
	case *pg.CreateRoleStmt:
		st.Command = "CREATE ROLE"
	case *pg.DropRoleStmt:
		st.Command = "DROP ROLE"
	case *pg.AlterRoleStmt:
		st.Command = "ALTER ROLE"
	case *pg.CreateSchemaStmt:
		st.Command = "CREATE SCHEMA"
	case *pg.CreateExtensionStmt:
		st.Command = "CREATE EXTENSION"
	case *pg.CreateSeqStmt:
		st.Command = "CREATE SEQUENCE"
	case *pg.AlterSeqStmt:
		st.Command = "ALTER SEQUENCE"
	case *pg.RefreshMatViewStmt:
		st.Command = "REFRESH MATERIALIZED VIEW"
	case *pg.CheckPointStmt:
		st.Command = "CHECKPOINT"
	case *pg.LoadStmt:
		st.Command = "LOAD"
	case *pg.ListenStmt:
		st.Command = "LISTEN"
	case *pg.UnlistenStmt:
		st.Command = "UNLISTEN"
	case *pg.NotifyStmt:
		st.Command = "NOTIFY"
	case *pg.DiscardStmt:
		st.Command = "DISCARD"
		if x.Target == pg.DiscardMode_DISCARD_ALL {
			// DISCARD ALL includes SET SESSION AUTHORIZATION DEFAULT.
			st.Setting = "session_authorization"
		}
	case *pg.AlterSystemStmt:
		st.Command = "ALTER SYSTEM"
		st.Setting = setName(x.Setstmt)
	case *pg.CommentStmt:
		st.Command = "COMMENT"
	case *pg.ReindexStmt:
		st.Command = "REINDEX"
	case *pg.ClusterStmt:
		st.Command = "CLUSTER"
	case *pg.SecLabelStmt:
		st.Command = "SECURITY LABEL"
	case *pg.ConstraintsSetStmt:
		st.Command = "SET CONSTRAINTS"
	case *pg.CreateTableSpaceStmt:
		st.Command = "CREATE TABLESPACE"
	case *pg.DropTableSpaceStmt:
		st.Command = "DROP TABLESPACE"
	case *pg.AlterTableSpaceOptionsStmt:
		st.Command = "ALTER TABLESPACE"
	case *pg.DefineStmt:
		st.Command = "CREATE " + objectName(x.Kind)
	case *pg.CreateEnumStmt, *pg.CompositeTypeStmt, *pg.CreateRangeStmt:
		st.Command = "CREATE TYPE"
	case *pg.AlterEnumStmt:
		st.Command = "ALTER TYPE"
	case *pg.CreateEventTrigStmt:
		st.Command = "CREATE EVENT TRIGGER"
	case *pg.AlterEventTrigStmt:
		st.Command = "ALTER EVENT TRIGGER"
	case *pg.CreateForeignServerStmt:
		st.Command = "CREATE SERVER"
	case *pg.AlterForeignServerStmt:
		st.Command = "ALTER SERVER"
	case *pg.CreateFdwStmt:
		st.Command = "CREATE FOREIGN DATA WRAPPER"
	case *pg.AlterFdwStmt:
		st.Command = "ALTER FOREIGN DATA WRAPPER"
	case *pg.CreateOpClassStmt:
		st.Command = "CREATE OPERATOR CLASS"
	case *pg.CreateOpFamilyStmt:
		st.Command = "CREATE OPERATOR FAMILY"
	case *pg.AlterOpFamilyStmt:
		st.Command = "ALTER OPERATOR FAMILY"
	case *pg.CreatePLangStmt:
		st.Command = "CREATE LANGUAGE"
	case *pg.CreateAmStmt:
		st.Command = "CREATE ACCESS METHOD"
	case *pg.CreateStatsStmt:
		st.Command = "CREATE STATISTICS"
	case *pg.AlterStatsStmt:
		st.Command = "ALTER STATISTICS"
	case *pg.AlterDatabaseSetStmt:
		st.Command = "ALTER DATABASE"
		st.Setting = setName(x.Setstmt)
	case *pg.AlterDatabaseStmt, *pg.AlterDatabaseRefreshCollStmt:
		st.Command = "ALTER DATABASE"
	case *pg.AlterRoleSetStmt:
		st.Command = "ALTER ROLE"
		st.Setting = setName(x.Setstmt)
	case *pg.AlterFunctionStmt:
		st.Command = "ALTER " + objectName(x.Objtype)
	case *pg.CreateDomainStmt:
		st.Command = "CREATE DOMAIN"
	case *pg.AlterDomainStmt:
		st.Command = "ALTER DOMAIN"
	default:
		st.Command = commandFromType(n)
	}
}

// setName is the parameter an ALTER ... SET changes.
func setName(s *pg.VariableSetStmt) string {
	if s == nil {
		return ""
	}
	if s.Kind == pg.VariableSetKind_VAR_RESET_ALL {
		return "all"
	}
	return strings.ToLower(s.Name)
}

// commandFromType derives a command from a parse node's type name for the
// long tail of utility statements: CreateForeignServerStmt becomes
// "CREATE FOREIGN SERVER". The words are exactly the node's name, so a policy
// author can read them off PostgreSQL's documentation.
func commandFromType(n any) string {
	t := reflect.TypeOf(n)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	name := strings.TrimSuffix(t.Name(), "Stmt")
	var words []string
	start := 0
	for i, r := range name {
		if i > 0 && unicode.IsUpper(r) {
			words = append(words, name[start:i])
			start = i
		}
	}
	words = append(words, name[start:])
	return strings.ToUpper(strings.Join(words, " "))
}
