package postgres

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// unsafeParameter says why a ParameterStatus from the upstream makes the
// gateway's parsing unsafe, or "".
func unsafeParameter(m *pgproto3.ParameterStatus) string {
	switch m.Name {
	case "client_encoding":
		if !strings.EqualFold(m.Value, "UTF8") {
			return fmt.Sprintf("the upstream switched client_encoding to %q; the gateway only parses UTF8", m.Value)
		}
	case "standard_conforming_strings":
		if m.Value != "on" {
			return "the upstream turned standard_conforming_strings off; the gateway cannot parse such SQL safely"
		}
	}
	return ""
}

// scrubError rewrites a server error for a caller whose results are masked:
// PostgreSQL quotes the offending value in messages such as `invalid input
// syntax for type integer: "4111 1111 1111 1111"`, so a masked column read
// into a cast, a constraint or a function's error would reach the caller
// (and the recording) unmasked. The SQLSTATE, severity and the names of the
// objects involved stay; the texts that can carry values go.
//
// Errors of the classes in nameOnlyClasses say what went wrong in terms of
// objects (a table the role may not read, a syntax error in the caller's
// own text, a transaction state), not row values: their message and hint
// pass. Their detail, which can (a failing row), never does.
func scrubError(m *pgproto3.ErrorResponse) *pgproto3.ErrorResponse {
	out := &pgproto3.ErrorResponse{
		Severity: m.Severity, SeverityUnlocalized: m.SeverityUnlocalized, Code: m.Code,
		Message:    fmt.Sprintf("gatehouse: the statement failed with SQLSTATE %s; the server's message is withheld because masks apply to your results (it may quote a masked value)", m.Code),
		SchemaName: m.SchemaName, TableName: m.TableName, ColumnName: m.ColumnName,
		DataTypeName: m.DataTypeName, ConstraintName: m.ConstraintName,
	}
	if len(m.Code) == 5 && nameOnlyClasses[m.Code[:2]] {
		out.Message, out.Hint = m.Message, m.Hint
	}
	return out
}

// nameOnlyClasses are SQLSTATE classes whose messages name objects and
// states, never data: 08 connection, 0A feature not supported, 25 invalid
// transaction state, 28 authorization, 3D/3F unknown database or schema,
// 40 transaction rollback, 42 syntax error or access rule violation
// (permission denied, undefined table or column), 53 insufficient
// resources, 54 program limit, 55 object not in prerequisite state, 57
// operator intervention (a cancel).
var nameOnlyClasses = map[string]bool{
	"08": true, "0A": true, "25": true, "28": true, "3D": true, "3F": true, "40": true,
	"42": true, "53": true, "54": true, "55": true, "57": true,
}

// scrubNotice does the same for notices and warnings.
func scrubNotice(m *pgproto3.NoticeResponse) *pgproto3.NoticeResponse {
	return &pgproto3.NoticeResponse{
		Severity: m.Severity, SeverityUnlocalized: m.SeverityUnlocalized, Code: m.Code,
		Message: fmt.Sprintf("gatehouse: a server %s (SQLSTATE %s) is withheld because masks apply to your results", strings.ToLower(m.Severity), m.Code),
	}
}
