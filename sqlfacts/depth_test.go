package sqlfacts_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// deepChains are left-nested constructs that overflow libpg_query's C stack
// when about 23,700 levels deep. Each must be refused with a ParseError
// before it reaches the parser, whatever its shape.
var deepChains = map[string]string{
	"plus chain":       "SELECT 1" + strings.Repeat(" + 1", 30000),
	"cast chain":       "SELECT 1" + strings.Repeat("::int", 30000),
	"union chain":      "SELECT 1" + strings.Repeat(" UNION SELECT 1", 30000),
	"join chain":       "SELECT * FROM t0" + strings.Repeat(" JOIN t ON true", 30000),
	"concat chain":     "SELECT 'a'" + strings.Repeat("||'a'", 30000),
	"not chain":        "SELECT " + strings.Repeat("NOT ", 30000) + "true",
	"unary minus":      "SELECT " + strings.Repeat("- ", 30000) + "1",
	"nested case":      "SELECT " + strings.Repeat("CASE WHEN true THEN ", 30000) + "1" + strings.Repeat(" END", 30000),
	"parens and chain": "SELECT " + strings.Repeat("(", 9000) + "1" + strings.Repeat(" + 1", 20000) + strings.Repeat(")", 9000),
}

const deepChainEnv = "SQLFACTS_TEST_DEEP_CHAIN"

// TestAnalyzeRefusesDeepChains runs each chain in a child process, because a
// failure of the guard is a SIGSEGV that would take this process down too.
func TestAnalyzeRefusesDeepChains(t *testing.T) {
	if name := os.Getenv(deepChainEnv); name != "" {
		_, err := sqlfacts.Analyze(deepChains[name])
		var pe *sqlfacts.ParseError
		if !errors.As(err, &pe) {
			fmt.Printf("Analyze returned %v, want a ParseError\n", err)
			os.Exit(3)
		}
		fmt.Printf("refused: %v\n", err)
		os.Exit(0)
	}
	if testing.Short() {
		t.Skip("spawns a process per chain")
	}
	for name := range deepChains {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestAnalyzeRefusesDeepChains$", "-test.count=1")
			cmd.Env = append(os.Environ(), deepChainEnv+"="+name)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child analyzing the %s (%d bytes) failed: %v\n%s", name, len(deepChains[name]), err, firstLines(string(out), 5))
			}
			if !strings.Contains(string(out), "refused:") {
				t.Fatalf("child output: %s", firstLines(string(out), 5))
			}
		})
	}
}

// TestAnalyzeAcceptsLargeFlatStatements: the nesting guard must not refuse
// big statements that are wide rather than deep: a bulk INSERT, a long IN
// list, a long AND chain (PostgreSQL flattens AND into a list).
func TestAnalyzeAcceptsLargeFlatStatements(t *testing.T) {
	var rows []string
	for i := range 10000 {
		rows = append(rows, fmt.Sprintf("(%d, 'name %d', -%d, %d.5::numeric, now() - interval '1 day')", i, i, i, i))
	}
	var ins []string
	for i := range 20000 {
		ins = append(ins, fmt.Sprint(i))
	}
	var ands []string
	for i := range 5000 {
		ands = append(ands, fmt.Sprintf("c%d = %d", i, i))
	}
	cases := map[string]string{
		"bulk insert":  "INSERT INTO t (id, name, delta, price, at) VALUES " + strings.Join(rows, ", "),
		"long IN list": "SELECT * FROM t WHERE id IN (" + strings.Join(ins, ", ") + ")",
		"long AND":     "SELECT * FROM t WHERE " + strings.Join(ands, " AND "),
	}
	for name, sql := range cases {
		t.Run(name, func(t *testing.T) {
			if len(sql) > sqlfacts.MaxSQLBytes {
				t.Fatalf("test input is %d bytes, over MaxSQLBytes", len(sql))
			}
			stmts, err := sqlfacts.Analyze(sql)
			if err != nil {
				t.Fatalf("Analyze(%d bytes): %v", len(sql), err)
			}
			if len(stmts) != 1 || len(stmts[0].Tables) != 1 {
				t.Fatalf("got %d statements", len(stmts))
			}
		})
	}
}
