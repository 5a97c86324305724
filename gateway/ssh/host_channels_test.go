package ssh

import (
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// TestHostOpenedChannelsCounted: the channels the host opens back to the
// caller (a remote forward's connections) count against MaxChannels as
// the caller's own do. Otherwise a caller with one granted remote forward
// has its own command on the host connect to it without end: every
// connection a channel, goroutines and a recorded event, with no bound.
func TestHostOpenedChannelsCounted(t *testing.T) {
	e := startEnv(t)
	e.publishWithoutNoForwarding(t, fmt.Sprintf(remoteForwardRule, "allow", "dev may expose a port"))
	c := e.dial(t, "dev")
	ln, err := c.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("remote forward: %v", err)
	}
	var accepted atomic.Int32
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() { // held open: each is a live channel
				<-stop
				conn.Close()
			}()
		}
	}()
	max := e.srv.cfg.MaxChannels
	var conns []net.Conn
	for range max + 8 {
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
	}
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	time.Sleep(2 * time.Second)
	if n := int(accepted.Load()); n > max {
		t.Errorf("%d channels from the host reached the caller; at most %d may be open", n, max)
	}
}
