package bundlestore

import (
	"context"
	"errors"
)

// Floor is a revision floor kept outside the data directory and shared by
// every replica that follows one bundle source. The data directory's last
// good bundle stops a rollback on the replica that holds it; a replica
// with an empty data directory (a new one, a replaced volume) has no floor
// of its own, and would otherwise activate whatever signed bundle the
// source serves, however old.
type Floor interface {
	// Admit records the bundle of revision rev and digest as activated,
	// raising the floor to it, unless the floor is above it. It returns
	// an error wrapping bundle.ErrRollback for a revision below the floor,
	// or for another bundle (another digest) at the floor's revision; an
	// error wrapping ErrFloorUnavailable when the floor cannot be read or
	// written.
	Admit(ctx context.Context, rev uint64, digest string) error
	// Close releases the floor's connections.
	Close()
}

// ErrFloorUnavailable refuses a bundle whose revision cannot be checked
// against the shared floor. The bundle is not known to be a rollback, but
// it is not known not to be one either: it stays refused, the active one
// stays, and the watchers try it again at their next check.
var ErrFloorUnavailable = errors.New("the shared bundle revision floor cannot be checked")

// WithFloor checks every bundle against a shared revision floor before it
// is activated (the state database's, PGFloor).
func WithFloor(f Floor) Option { return func(s *Store) { s.floor = f } }
