package clock

import (
	"testing"
	"time"
)

func TestFakeFiresInOrder(t *testing.T) {
	f := NewFake(time.Unix(1000, 0))
	late := f.NewTimer(2 * time.Second)
	early := f.NewTimer(time.Second)
	called := make(chan struct{})
	f.AfterFunc(1500*time.Millisecond, func() { close(called) })
	stopped := f.NewTimer(time.Second)
	if !stopped.Stop() {
		t.Fatal("an armed timer did not stop")
	}
	f.Advance(999 * time.Millisecond)
	select {
	case <-early.C():
		t.Fatal("fired before its time")
	default:
	}
	f.Advance(time.Millisecond)
	if got := <-early.C(); !got.Equal(time.Unix(1001, 0)) {
		t.Fatalf("fired at %v", got)
	}
	f.Advance(time.Second)
	<-called
	<-late.C()
	select {
	case <-stopped.C():
		t.Fatal("a stopped timer fired")
	default:
	}
	if f.Timers() != 0 {
		t.Fatalf("%d timers left", f.Timers())
	}
	if f.NewTimer(0) == nil || f.Now() != time.Unix(1002, 0) {
		t.Fatal("clock")
	}
}
