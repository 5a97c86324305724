package s3test

import (
	"testing"
	"time"
)

// TestStartStopRestart: the server answers signed requests, survives a
// stop and a restart with its bucket, and is stopped at cleanup.
func TestStartStopRestart(t *testing.T) {
	start := time.Now()
	s := Start(t)
	t.Cleanup(func() { t.Logf("cleanup at %s", time.Since(start).Round(time.Millisecond)) })
	t.Logf("started in %s", time.Since(start).Round(time.Millisecond))
	stop := time.Now()
	s.Stop(t)
	t.Logf("stopped in %s", time.Since(stop).Round(time.Millisecond))
	if s.ready() {
		t.Fatal("the S3 API answers after Stop")
	}
	restart := time.Now()
	s.Restart(t)
	t.Logf("restarted in %s", time.Since(restart).Round(time.Millisecond))
	b := time.Now()
	if err := s.CreateBucket(s.Bucket()); err != nil {
		t.Fatalf("the bucket after a restart: %v", err)
	}
	t.Logf("bucket in %s", time.Since(b).Round(time.Millisecond))
	b = time.Now()
	s.Stop(t)
	t.Logf("stopped in %s", time.Since(b).Round(time.Millisecond))
}
