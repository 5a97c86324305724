package session

import (
	"net"
	"testing"
	"time"
)

// A caller whose first bytes wait unread in the socket (the gateway is
// busy accepting a flood) is not taken for a silent socket: the newer
// silent one is closed to make room, not the caller.
func TestPendingPeeksBeforeEvicting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accept := func(speak bool) (server, client net.Conn) {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if speak {
			if _, err := c.Write([]byte{0, 0, 0, 8}); err != nil {
				t.Fatal(err)
			}
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s, c
	}
	c := &Core{limiters: map[string]*limiter{}}
	c.SetLimits("test", Limits{MaxPending: 1, LoginTimeout: time.Second})
	closed := map[string]bool{}

	caller, _ := accept(true)
	// Let the caller's bytes arrive; the gateway has not read them.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		p := &pendingConn{conn: caller}
		if !p.silent() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the caller's bytes never showed in its socket")
		}
	}
	_, doneCaller, _ := c.Pending("test", caller, func() { closed["caller"] = true })
	defer doneCaller()
	silent, _ := accept(false)
	// The caller's session is blocked reading, as a real one is: peeking
	// must not wait for it.
	go func() { _, _ = caller.Read(make([]byte, 1)) }()
	time.Sleep(20 * time.Millisecond)
	start := time.Now()
	_, doneSilent, _ := c.Pending("test", silent, func() { closed["silent"] = true })
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("making room took %v: the peek waited for a session's read", d)
	}
	defer doneSilent()
	if closed["caller"] || !closed["silent"] {
		t.Fatalf("closed %v: the silent socket should have made room, not the caller", closed)
	}
	// The caller's bytes were read past the wrapper, so nothing marks it
	// any more: it is the oldest silent connection, and goes.
	other, _ := accept(true)
	time.Sleep(50 * time.Millisecond)
	_, doneOther, _ := c.Pending("test", other, func() { closed["other"] = true })
	defer doneOther()
	if !closed["caller"] || closed["other"] {
		t.Fatalf("closed %v: when every pending connection has spoken, the oldest makes room", closed)
	}
}
