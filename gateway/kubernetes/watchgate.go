package kubernetes

import (
	"fmt"
	"io"
	"sync/atomic"

	"github.com/gatehouse-dev/gatehouse/bundle"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// watchGate holds back a watch's bytes once the bundle in force no longer
// masks them as the watch's masks do. The re-check (recheck) cuts such a
// watch too, but only at its next tick: an event the cluster sent in
// between would reach the caller masked as the old bundle said, or not
// masked at all, after the new bundle that hides it is in force. So every
// read is checked after the bytes arrive and before they are handed on;
// the check is one atomic load while the revision stays the same.
type watchGate struct {
	src  io.ReadCloser
	c    *call
	held atomic.Uint64 // the revision last found to mask the same way
	cut  atomic.Bool
}

func newWatchGate(c *call, src io.ReadCloser) *watchGate {
	g := &watchGate{src: src, c: c}
	g.held.Store(c.d.BundleRevision)
	return g
}

func (g *watchGate) Read(p []byte) (int, error) {
	n, err := g.src.Read(p)
	if n > 0 && !g.holds() {
		// What was read may be an event the bundle in force hides: it is
		// dropped, and the stream ends. The caller's next watch is
		// masked as that bundle says.
		return 0, io.EOF
	}
	return n, err
}

func (g *watchGate) Close() error { return g.src.Close() }

// holds reports whether the bundle in force still allows the watch and
// masks it the same way. A bundle that does not is noted once.
func (g *watchGate) holds() bool {
	if g.cut.Load() {
		return false
	}
	c := g.c
	if c.srv.core.Bundles().Current().Revision == g.held.Load() {
		return true
	}
	d := c.cs.Judge(c.attrs.Request)
	why := ""
	switch {
	case d.Effect != bundle.EffectAllow:
		why = "no longer allows it"
	case !c.sameMasks(d):
		why = "masks its answer differently"
	default:
		g.held.Store(d.BundleRevision)
		return true
	}
	if !g.cut.Swap(true) {
		c.cs.Log().Info("a watch is cut: the bundle in force "+why, "request", c.attrs.Request.Describe(), "revision", d.BundleRevision)
		c.cs.NoteOutcome(c.ref, core.Outcome{Error: fmt.Sprintf("cut: bundle revision %d %s", d.BundleRevision, why)})
	}
	return false
}
