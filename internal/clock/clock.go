// Package clock is the time source of the gateway's runtime. Everything
// that reads the time or waits for it (token expiry, approval holds and
// expiries) takes a Clock, so that tests move time forward instead of
// sleeping for it.
package clock

import (
	"sort"
	"sync"
	"time"
)

// Clock tells the time and arms timers.
type Clock interface {
	Now() time.Time
	// NewTimer fires once on its channel after d.
	NewTimer(d time.Duration) Timer
	// AfterFunc calls f in its own goroutine after d.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a timer armed by a Clock.
type Timer interface {
	// C is the channel a NewTimer fires on (nil for AfterFunc).
	C() <-chan time.Time
	// Stop disarms the timer; it reports whether it was armed.
	Stop() bool
}

// Real is the wall clock.
var Real Clock = realClock{}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) Timer { return realTimer{t: time.NewTimer(d)} }

func (realClock) AfterFunc(d time.Duration, f func()) Timer {
	return realTimer{t: time.AfterFunc(d, f)}
}

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time { return r.t.C }
func (r realTimer) Stop() bool          { return r.t.Stop() }

// Fake is a clock that moves only when told to. Timers fire, in order of
// their deadlines, as Advance or Set passes them.
type Fake struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

// NewFake makes a fake clock showing t.
func NewFake(t time.Time) *Fake { return &Fake{now: t} }

// Now is the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Advance moves the clock forward by d and fires the timers it passes.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	t := f.now.Add(d)
	f.mu.Unlock()
	f.Set(t)
}

// Set moves the clock to t (never backwards) and fires the timers it
// passes.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	if t.After(f.now) {
		f.now = t
	}
	var due, keep []*fakeTimer
	for _, x := range f.timers {
		if !x.at.After(f.now) {
			due = append(due, x)
		} else {
			keep = append(keep, x)
		}
	}
	f.timers = keep
	now := f.now
	f.mu.Unlock()
	sort.SliceStable(due, func(i, j int) bool { return due[i].at.Before(due[j].at) })
	for _, x := range due {
		x.fire(now)
	}
}

// Timers is how many timers are armed (tests wait for one to be set).
func (f *Fake) Timers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.timers)
}

// NewTimer arms a timer that fires on its channel.
func (f *Fake) NewTimer(d time.Duration) Timer {
	return f.arm(d, &fakeTimer{c: make(chan time.Time, 1)})
}

// AfterFunc arms a timer that calls fn in its own goroutine.
func (f *Fake) AfterFunc(d time.Duration, fn func()) Timer {
	return f.arm(d, &fakeTimer{fn: fn})
}

func (f *Fake) arm(d time.Duration, t *fakeTimer) Timer {
	f.mu.Lock()
	t.clock, t.at = f, f.now.Add(d)
	now := f.now
	if d > 0 {
		f.timers = append(f.timers, t)
		f.mu.Unlock()
		return t
	}
	f.mu.Unlock()
	t.fire(now)
	return t
}

type fakeTimer struct {
	clock *Fake
	at    time.Time
	c     chan time.Time
	fn    func()
}

func (t *fakeTimer) fire(now time.Time) {
	if t.fn != nil {
		go t.fn()
		return
	}
	select {
	case t.c <- now:
	default:
	}
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	f := t.clock
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, x := range f.timers {
		if x == t {
			f.timers = append(f.timers[:i], f.timers[i+1:]...)
			return true
		}
	}
	return false
}
