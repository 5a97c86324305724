package pgcluster

import (
	"slices"
	"testing"
)

func TestParseStatements(t *testing.T) {
	tests := map[string]struct {
		log  string
		want []Statement
	}{
		"server messages are not statements": {
			log: "2025-01-02 03:04:05.678 UTC [10] LOG:  database system is ready to accept connections\n",
		},
		"simple protocol": {
			log:  "2025-01-02 03:04:05.678 UTC [11] app@appdb LOG:  statement: SELECT 1\n",
			want: []Statement{{User: "app", Database: "appdb", SQL: "SELECT 1"}},
		},
		"extended protocol, parameters in DETAIL are not SQL": {
			log: "2025-01-02 03:04:05.678 UTC [11] app@appdb LOG:  execute stmtcache_1: SELECT $1\n" +
				"2025-01-02 03:04:05.678 UTC [11] app@appdb DETAIL:  parameters: $1 = '1'\n",
			want: []Statement{{User: "app", Database: "appdb", SQL: "SELECT $1"}},
		},
		"multi-line statement keeps its own indentation": {
			log: "2025-01-02 03:04:05.678 UTC [11] app@appdb LOG:  statement: SELECT v\n" +
				"\t\tFROM t\n" +
				"\tWHERE v = 'LOG:  x'\n" +
				"2025-01-02 03:04:05.679 UTC [11] app@appdb ERROR:  relation \"t\" does not exist\n" +
				"\tsecond line of the error\n",
			want: []Statement{{User: "app", Database: "appdb", SQL: "SELECT v\n\tFROM t\nWHERE v = 'LOG:  x'"}},
		},
		"role names with @ and spaces": {
			log: "2025-01-02 03:04:05.678 UTC [12] alice@example.com@appdb LOG:  statement: SELECT 2\n" +
				"2025-01-02 03:04:05.678 UTC [13] bob smith@appdb LOG:  statement: SELECT 3\n",
			want: []Statement{
				{User: "alice@example.com", Database: "appdb", SQL: "SELECT 2"},
				{User: "bob smith", Database: "appdb", SQL: "SELECT 3"},
			},
		},
		"a failed statement's STATEMENT echo is not counted twice": {
			log: "2025-01-02 03:04:05.678 UTC [11] app@appdb LOG:  statement: SELECT * FROM missing\n" +
				"2025-01-02 03:04:05.678 UTC [11] app@appdb ERROR:  relation \"missing\" does not exist at character 15\n" +
				"2025-01-02 03:04:05.678 UTC [11] app@appdb STATEMENT:  SELECT * FROM missing\n",
			want: []Statement{{User: "app", Database: "appdb", SQL: "SELECT * FROM missing"}},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := parseStatements([]byte(tt.log)); !slices.Equal(got, tt.want) {
				t.Fatalf("parseStatements =\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}
