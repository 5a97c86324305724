package postgres

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestMaskedExecuteDescribesInTheSameBatch: an Execute whose rows are
// masked needs their layout, which its own response does not carry. The
// gateway asks for it with a Describe of the portal sent just before the
// Execute, in the client's batch: no protocol Flush, and so no round trip
// to the database before the Execute goes. The rows still come back masked,
// and the recording says which columns were, before the row is sent.
func TestMaskedExecuteDescribesInTheSameBatch(t *testing.T) {
	r := newOverheadRig(t)
	s := r.session(t, false)
	var mu sync.Mutex
	var wire []string
	client := runSessionSeeing(t, s, func(m pgproto3.FrontendMessage) {
		name := strings.TrimPrefix(fmt.Sprintf("%T", m), "*pgproto3.")
		if d, ok := m.(*pgproto3.Describe); ok {
			name += " " + string(d.ObjectType)
		}
		mu.Lock()
		wire = append(wire, name)
		mu.Unlock()
	})
	exchange(t, client, nil,
		&pgproto3.Parse{Name: "stmt1", Query: overheadParamSQL},
		&pgproto3.Describe{ObjectType: 'S', Name: "stmt1"},
		&pgproto3.Sync{})
	mu.Lock()
	wire = nil
	mu.Unlock()
	for i := range 3 {
		var row []string
		exchange(t, client, &row,
			&pgproto3.Bind{PreparedStatement: "stmt1", Parameters: [][]byte{[]byte("1")}},
			&pgproto3.Execute{},
			&pgproto3.Sync{})
		mustBeMasked(t, row)
		mu.Lock()
		got := strings.Join(wire, ", ")
		wire = nil
		mu.Unlock()
		if want := "Bind, Describe P, Execute, Sync"; got != want {
			t.Fatalf("execution %d reached the upstream as %q, want %q", i+1, got, want)
		}
	}
	// The recording names the masked columns of each execution.
	paths, _ := filepath.Glob(filepath.Join(s.rec.Dir(), "*.jsonl"))
	masked := 0
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range bytes.Split(data, []byte("\n")) {
			if bytes.Contains(line, []byte(`"type":"masked"`)) && bytes.Contains(line, []byte("card_number")) {
				masked++
			}
		}
	}
	if masked != 3 {
		t.Errorf("%d masked events naming card_number for 3 masked executions", masked)
	}
}
