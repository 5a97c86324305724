package postgres

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// maxReadAhead bounds what a client may send while a statement of its is
// held; past it the gateway stops reading (and so stops noticing a
// disconnect) until the hold ends.
const maxReadAhead = 1 << 20

// clientReader is the client connection as the protocol reader sees it. It
// can read ahead while a statement is held for approval, so that a client
// that goes away is noticed at once rather than when the hold ends; what it
// reads ahead is handed to the protocol reader afterwards, in order.
type clientReader struct {
	conn net.Conn
	mu   sync.Mutex
	buf  []byte
	err  error // what the read-ahead ended with, for the protocol reader
}

func (c *clientReader) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		c.mu.Unlock()
		return n, nil
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	c.mu.Unlock()
	return c.conn.Read(p)
}

// watch reads ahead until stop is called. gone is closed if the client
// disconnects (or its connection fails) meanwhile. stop returns once the
// read-ahead has ended; the connection is then as it was, with what was
// read kept for Read.
func (c *clientReader) watch() (gone <-chan struct{}, stop func()) {
	g := make(chan struct{})
	done := make(chan struct{})
	var stopping sync.Mutex
	stopped := false
	go func() {
		defer close(done)
		tmp := make([]byte, 4096)
		for {
			c.mu.Lock()
			full := len(c.buf) >= maxReadAhead || c.err != nil
			c.mu.Unlock()
			if full {
				return
			}
			n, err := c.conn.Read(tmp)
			c.mu.Lock()
			c.buf = append(c.buf, tmp[:n]...)
			if err != nil {
				stopping.Lock()
				interrupted := stopped && errors.Is(err, os.ErrDeadlineExceeded)
				stopping.Unlock()
				if !interrupted {
					c.err = err
					close(g)
				}
				c.mu.Unlock()
				return
			}
			c.mu.Unlock()
		}
	}()
	return g, func() {
		stopping.Lock()
		stopped = true
		stopping.Unlock()
		_ = c.conn.SetReadDeadline(time.Now())
		<-done
		_ = c.conn.SetReadDeadline(time.Time{})
	}
}
