package sqlfacts_test

import (
	"errors"
	"fmt"

	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

func ExampleAnalyze() {
	sql := `/* nightly cleanup */
WITH gone AS (DELETE FROM app.sessions WHERE expires_at < now() RETURNING user_id)
SELECT count(*) FROM gone;
SELECT $$DROP TABLE users$$;
SET ROLE admin`

	stmts, err := sqlfacts.Analyze(sql)
	if err != nil {
		var pe *sqlfacts.ParseError
		if errors.As(err, &pe) {
			fmt.Println("deny:", pe)
		}
		return
	}
	for _, s := range stmts {
		fmt.Printf("%s", s.Command)
		if s.Via != "" {
			fmt.Printf(" (via %s)", s.Via)
		}
		for _, t := range s.Tables {
			fmt.Printf(" %s.%s:%s", t.Schema, t.Name, t.Access)
		}
		if len(s.Functions) > 0 {
			fmt.Printf(" functions=%v", s.Functions)
		}
		if s.HasWhere {
			fmt.Print(" where")
		}
		if s.Setting != "" {
			fmt.Printf(" setting=%s", s.Setting)
		}
		fmt.Println()
	}

	_, err = sqlfacts.Analyze("DELETE FROM t WHERE")
	fmt.Println(err)

	// Output:
	// SELECT app.sessions:write functions=[count now]
	// DELETE (via WITH) app.sessions:write functions=[now] where
	// SELECT
	// SET setting=role
	// SQL does not parse: syntax error at end of input at character 20
}
