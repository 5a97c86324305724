package bundlestore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/internal/pgtest"
)

// TestFloorOneBundleAtARevision: two replicas activating two bundles of
// one revision at the same moment, on a fresh floor or a floor below it:
// exactly one is admitted, and the other is refused as a rollback.
func TestFloorOneBundleAtARevision(t *testing.T) {
	srv := pgtest.Start(t)
	srv.CreateRole(t, "gatehouse", "pw")
	srv.CreateDatabase(t, "state", "gatehouse")
	dsn := srv.ConnString("gatehouse", "pw", "state")
	ctx := context.Background()
	var floors [2]*PGFloor
	for i := range floors {
		f, err := OpenPGFloor(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(f.Close)
		floors[i] = f
	}
	for rev := uint64(1); rev <= 40; rev++ {
		var wg sync.WaitGroup
		var errs [2]error
		for i, f := range floors {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = f.Admit(ctx, rev, fmt.Sprintf("digest-%d-%d", rev, i))
			}()
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, bundle.ErrRollback):
				t.Fatalf("revision %d: %v", rev, err)
			}
		}
		if ok != 1 {
			t.Fatalf("revision %d: %d of two bundles admitted: %v", rev, ok, errs)
		}
	}
}
