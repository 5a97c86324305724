package sqlfacts

import (
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"
)

func TestRedactSecrets(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"ALTER ROLE app PASSWORD 's3cret'", "ALTER ROLE app PASSWORD '[redacted]'"},
		{"alter user app with encrypted password 's3cret' valid until '2030-01-01'", "alter user app with encrypted password '[redacted]' valid until '2030-01-01'"},
		{"CREATE ROLE a LOGIN PASSWORD E's3\\'cret'; SELECT 1", "CREATE ROLE a LOGIN PASSWORD '[redacted]'; SELECT 1"},
		{"CREATE USER b PASSWORD $$s3cret$$", "CREATE USER b PASSWORD '[redacted]'"},
		{"CREATE USER c PASSWORD 's3' \n 'cret'", "CREATE USER c PASSWORD '[redacted]'"},
		{"ALTER ROLE d PASSWORD U&'s3\\0063ret'", "ALTER ROLE d PASSWORD '[redacted]'"},
		{"ALTER ROLE e PASSWORD NULL", "ALTER ROLE e PASSWORD NULL"},
		// An option without a value hides no constant after it, in its
		// statement or the next: nothing the caller sends is hidden from
		// the recording or the approvers but a secret.
		{"ALTER ROLE e PASSWORD NULL VALID UNTIL '2030-01-01'", "ALTER ROLE e PASSWORD NULL VALID UNTIL '2030-01-01'"},
		{"ALTER ROLE e PASSWORD NULL; DELETE FROM t WHERE note = 'shown'", "ALTER ROLE e PASSWORD NULL; DELETE FROM t WHERE note = 'shown'"},
		{"ALTER USER MAPPING FOR bob SERVER s OPTIONS (DROP password); SELECT 'shown'", "ALTER USER MAPPING FOR bob SERVER s OPTIONS (DROP password); SELECT 'shown'"},
		{"CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 's3cret')", "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password '[redacted]')"},
		{`ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET "password" 's3cret')`, `ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET "password" '[redacted]')`},
		{`ALTER USER MAPPING FOR bob SERVER s OPTIONS (ADD U&"p\0061ssword" 's3cret')`, `ALTER USER MAPPING FOR bob SERVER s OPTIONS (ADD U&"p\0061ssword" '[redacted]')`},
		{"CREATE SUBSCRIPTION sub CONNECTION 'host=db password=s3cret' PUBLICATION p", "CREATE SUBSCRIPTION sub CONNECTION '[redacted]' PUBLICATION p"},
		{"ALTER SUBSCRIPTION sub CONNECTION 'postgresql://u:s3cret@db/x'", "ALTER SUBSCRIPTION sub CONNECTION '[redacted]'"},
		{"SELECT dblink_connect('c', 'host=db password=s3cret')", "SELECT dblink_connect('c', '[redacted]')"},
		{"SELECT dblink_connect_u('c', 'postgresql://u:s3cret@db/x'::text)", "SELECT dblink_connect_u('c', '[redacted]'::text)"},
		{"SELECT dblink_connect('host=db password=s3cret'::text)", "SELECT dblink_connect('[redacted]'::text)"},
		{"CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', sslpassword 's3cret')", "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', sslpassword '[redacted]')"},
		{"SELECT dblink_exec('c', 'UPDATE t SET a = 1')", "SELECT dblink_exec('c', 'UPDATE t SET a = 1')"},
		{"SELECT dblink_connect('host=db password=s3cret')", "SELECT dblink_connect('[redacted]')"},
		{"SELECT * FROM public.dblink('postgresql://u:s3cret@db/x', 'SELECT 1') AS t(a int)", "SELECT * FROM public.dblink('[redacted]', 'SELECT 1') AS t(a int)"},
		{"SELECT * FROM dblink('conn1', 'SELECT password FROM t') AS t(a text)", "SELECT * FROM dblink('conn1', 'SELECT password FROM t') AS t(a text)"},
		// Not secrets: a column named password, a comment, a function body.
		{"SELECT password FROM users WHERE id = 1", "SELECT password FROM users WHERE id = 1"},
		{"UPDATE users SET password = 'x' -- password", "UPDATE users SET password = 'x' -- password"},
		{"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'SELECT 1 -- password'", "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'SELECT 1 -- password'"},
		// Does not parse: as sent.
		{"ALTER ROLE PASSWORD 'x' WHERE", "ALTER ROLE PASSWORD 'x' WHERE"},
		{"SELECT 1", "SELECT 1"},
	} {
		if got := RedactSecrets(c.in); got != c.want {
			t.Errorf("RedactSecrets(%q)\n got %q\nwant %q", c.in, got, c.want)
		}
	}
}

// FuzzRedactSecrets: redaction never panics, never makes text that parsed
// unparseable, and leaves no password value of a role statement behind.
func FuzzRedactSecrets(f *testing.F) {
	for _, seed := range []string{
		"ALTER ROLE app PASSWORD 's3cret'",
		"CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 's3cret'); CREATE ROLE x PASSWORD 'y'",
		"CREATE SUBSCRIPTION sub CONNECTION 'host=db password=s3cret' PUBLICATION p",
		"SELECT dblink_connect('host=db password=s3cret')",
		`SELECT U&'\0041' UESCAPE '!', E'\'' password`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		out := RedactSecrets(sql)
		if out == sql {
			return
		}
		// PostgreSQL's parser, as RedactSecrets uses it (Analyze also
		// refuses text it would not forward, such as a NUL byte).
		if _, err := pg.Parse(sql); err != nil {
			t.Fatalf("text that does not parse was changed: %q -> %q", sql, out)
		}
		if _, err := pg.Parse(out); err != nil {
			t.Fatalf("redacted text does not parse: %q -> %q: %v", sql, out, err)
		}
		if strings.Count(out, Redacted) == 0 {
			t.Fatalf("changed without a redaction: %q -> %q", sql, out)
		}
	})
}
