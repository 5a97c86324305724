package recorder

import (
	"sync/atomic"
	"time"
)

// bounds are the upper bounds of the recorder's latency histogram. An
// fdatasync on a local disk takes a few hundred microseconds; the top
// buckets are for a struggling disk.
var bounds = [...]time.Duration{
	50 * time.Microsecond, 100 * time.Microsecond, 250 * time.Microsecond,
	500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond,
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond,
	50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	time.Second,
}

// Stats count the recorder's work, for metrics.
type Stats struct {
	// Errors counts writes that failed: a request's refuses the request,
	// a start's the session; any other leaves a gap the recording reports.
	Errors atomic.Int64
	// Nanos sums the time spent making events durable (Record), Records
	// counts them, and Buckets[i] counts those that took at most
	// bounds[i] (the last bucket is everything slower).
	Nanos   atomic.Int64
	Records atomic.Int64
	Buckets [len(bounds) + 1]atomic.Int64
	// Syncs counts the fdatasyncs that made events durable (group commits
	// of the journal, and checkpoints): Records / Syncs is how many events
	// one shares.
	Syncs atomic.Int64
	// AnchorFailures counts exports to the anchor that failed (each is
	// retried); Anchored is the last ledger entry the anchor holds.
	AnchorFailures atomic.Int64
	Anchored       atomic.Uint64
}

func (st *Stats) observe(d time.Duration) {
	st.Nanos.Add(int64(d))
	st.Records.Add(1)
	i := 0
	for i < len(bounds) && d > bounds[i] {
		i++
	}
	st.Buckets[i].Add(1)
}

// Histogram reads the latency histogram as Prometheus wants it: the
// cumulative count at each bound (in seconds), the total count and the sum
// in seconds.
func (st *Stats) Histogram() (buckets map[float64]uint64, count uint64, sum float64) {
	buckets = make(map[float64]uint64, len(bounds))
	var cum uint64
	for i, b := range bounds {
		cum += uint64(st.Buckets[i].Load())
		buckets[b.Seconds()] = cum
	}
	// The count includes the overflow bucket, so it is read after the
	// buckets and never less than the last cumulative value.
	count = cum + uint64(st.Buckets[len(bounds)].Load())
	return buckets, count, float64(st.Nanos.Load()) / 1e9
}
