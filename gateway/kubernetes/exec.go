package kubernetes

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// The channel subprotocols of exec, attach and port-forward over
// WebSocket. Each binary message starts with its channel (0 stdin, 1
// stdout, 2 stderr, 3 error, 4 resize, 255 close); the base64 variants
// send text messages of an ASCII channel digit and base64 data. A
// subprotocol not listed here is not offered upstream: the gateway does
// not relay a stream it cannot record.
var channelProtocols = map[string]bool{
	"v5.channel.k8s.io": false, "v4.channel.k8s.io": false, "v3.channel.k8s.io": false,
	"v2.channel.k8s.io": false, "channel.k8s.io": false,
	"v4.base64.channel.k8s.io": true, "base64.channel.k8s.io": true,
	"SPDY/3.1+portforward.k8s.io": false, "portforward.k8s.io": false, "v2.portforward.k8s.io": false,
}

// filterSubprotocols keeps the subprotocols the gateway can record.
func filterSubprotocols(h http.Header) {
	var keep []string
	for _, v := range h.Values("Sec-Websocket-Protocol") {
		for p := range strings.SplitSeq(v, ",") {
			p = strings.TrimSpace(p)
			if _, ok := channelProtocols[p]; ok {
				keep = append(keep, p)
			}
		}
	}
	h.Del("Sec-Websocket-Protocol")
	if len(keep) > 0 {
		h.Set("Sec-Websocket-Protocol", strings.Join(keep, ", "))
	}
}

// execRecording records an upgraded stream's channels: stdout and stderr
// as output frames, stdin as input frames, as the SSH gateway records an
// exec, so that replay and the asciicast export read both alike.
type execRecording struct {
	out, in *core.Stream
	conn    io.ReadWriteCloser
	down    frameReader // upstream to caller: stdout, stderr, error
	up      frameReader // caller to upstream: stdin (masked frames)
	once    sync.Once
	total   int64
}

// recordStream wraps an upgraded response's connection so that what
// crosses it is recorded. Only a WebSocket upgrade with a channel
// subprotocol the gateway knows is relayed.
func (c *call) recordStream(resp *http.Response) (*execRecording, error) {
	conn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		return nil, &maskError{msg: "the cluster's upgraded connection cannot be relayed"}
	}
	proto := resp.Header.Get("Sec-Websocket-Protocol")
	b64, known := channelProtocols[proto]
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") || !known {
		conn.Close()
		return nil, &maskError{msg: fmt.Sprintf("the cluster chose the stream protocol %q, which the gateway cannot record; the stream is refused", proto)}
	}
	limit := c.srv.cfg.RecordLimit
	rec := &execRecording{conn: conn, out: core.NewStream(c.cs, "o", limit), in: core.NewStream(c.cs, "i", limit)}
	rec.out.Attach(c.ref)
	rec.in.Attach(c.ref)
	// Port-forward carries the forwarded connection's bytes, not a
	// terminal: only how much is counted.
	record := c.attrs.Request.Subresource != "portforward"
	// With a terminal (kubectl exec -it, attach -it) stdin is what a
	// person types, passwords at prompts whose echo is off included: it
	// is counted, not kept, as an SSH shell's input is. Piped stdin is
	// recorded.
	recordInput := record && !terminal(c.query)
	rec.down = frameReader{base64: b64, deliver: func(ch byte, data []byte) {
		if record && (ch == 1 || ch == 2 || ch == 3) {
			rec.out.Write(data)
		}
	}}
	rec.up = frameReader{base64: b64, deliver: func(ch byte, data []byte) {
		if recordInput && ch == 0 {
			rec.in.Write(data)
		}
	}}
	resp.Body = &recordingConn{rec: rec}
	return rec, nil
}

// terminal reports whether an exec or attach asks for a terminal, as the
// API server reads its tty parameter: the first value, true unless it is
// 0 or false (in any case), so tty= and tty=yes are terminals too.
func terminal(q url.Values) bool {
	v, ok := q["tty"]
	if !ok || len(v) == 0 {
		return false
	}
	return v[0] != "0" && !strings.EqualFold(v[0], "false")
}

// close flushes the recording and returns the bytes the stream carried.
func (r *execRecording) close() int64 {
	r.once.Do(func() {
		r.out.Close()
		r.in.Close()
	})
	return r.down.count() + r.up.count()
}

// recordingConn is the upstream side of an upgraded stream: reads are
// what the cluster sends the caller, writes what the caller sends it.
// Bytes pass through unchanged; a copy is parsed into frames.
type recordingConn struct{ rec *execRecording }

// errUnreadable ends a stream whose framing the recorder cannot read:
// what it cannot record, it does not relay.
var errUnreadable = errors.New("gatehouse: the stream's framing could not be read; it is closed (what cannot be recorded is not relayed)")

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.rec.conn.Read(p)
	if n > 0 && !c.rec.down.feed(p[:n]) {
		c.rec.conn.Close()
		return 0, errUnreadable
	}
	return n, err
}

func (c *recordingConn) Write(p []byte) (int, error) {
	if !c.rec.up.feed(p) {
		c.rec.conn.Close()
		return 0, errUnreadable
	}
	return c.rec.conn.Write(p)
}

func (c *recordingConn) Close() error { return c.rec.conn.Close() }

// count is how many bytes were fed.
func (f *frameReader) count() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bytes
}

// frameReader parses a stream of WebSocket frames (RFC 6455) fed to it in
// pieces, and delivers each channel message's data. Bytes it cannot parse
// (an unknown opcode, an oversized or fragmented control frame, a frame
// over maxFrame) stop it, with a marker in the recording, and feed says
// so: the stream is then closed, since what follows would go unrecorded.
type frameReader struct {
	base64  bool
	deliver func(channel byte, data []byte)

	mu     sync.Mutex
	buf    []byte
	bytes  int64
	broken bool
}

// maxFrame bounds a frame the recorder buffers whole.
const maxFrame = 16 << 20

func (f *frameReader) feed(p []byte) (ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bytes += int64(len(p))
	if f.broken {
		return false
	}
	f.buf = append(f.buf, p...)
	for {
		n, err := f.frame(f.buf)
		if err != nil {
			f.broken = true
			f.buf = nil
			f.deliver(3, []byte("\r\n[gatehouse: the stream's framing could not be read ("+err.Error()+"); the stream is closed]\r\n"))
			return false
		}
		if n == 0 {
			return true
		}
		f.buf = f.buf[n:]
	}
}

var errFrameTooLarge = errors.New("a frame is larger than 16 MiB")

// frame parses one frame at the start of b, returning its length, or 0
// when b does not hold a whole frame yet.
func (f *frameReader) frame(b []byte) (int, error) {
	if len(b) < 2 {
		return 0, nil
	}
	fin := b[0]&0x80 != 0
	op := b[0] & 0x0f
	masked := b[1]&0x80 != 0
	n := uint64(b[1] & 0x7f)
	h := 2
	switch n {
	case 126:
		if len(b) < 4 {
			return 0, nil
		}
		n, h = uint64(binary.BigEndian.Uint16(b[2:4])), 4
	case 127:
		if len(b) < 10 {
			return 0, nil
		}
		n, h = binary.BigEndian.Uint64(b[2:10]), 10
	}
	if n > maxFrame {
		return 0, errFrameTooLarge
	}
	var key []byte
	if masked {
		if len(b) < h+4 {
			return 0, nil
		}
		key = b[h : h+4]
		h += 4
	}
	if uint64(len(b)-h) < n {
		return 0, nil
	}
	payload := make([]byte, n)
	copy(payload, b[h:h+int(n)])
	for i := range payload {
		if key != nil {
			payload[i] ^= key[i%4]
		}
	}
	switch op {
	case 0x0, 0x1, 0x2: // continuation, text, binary
		// Each data frame is read as a message of its own, as the API
		// server reads them (x/net/websocket, frame by frame): a
		// continuation's first byte is a channel there, and so it is
		// here. Joining fragments would record something other than
		// what the server acts on.
		f.message(payload)
	case 0x8, 0x9, 0xa: // close, ping, pong
		if !fin || n > 125 {
			return 0, errors.New("a control frame is fragmented or too long")
		}
	default:
		return 0, fmt.Errorf("unknown opcode %#x", op)
	}
	return h + int(n), nil
}

// message handles one data frame: its channel, then its data.
func (f *frameReader) message(payload []byte) {
	if len(payload) == 0 {
		return
	}
	if f.base64 {
		if payload[0] < '0' || payload[0] > '9' {
			return
		}
		dec, err := base64.StdEncoding.DecodeString(string(payload[1:]))
		if err == nil && len(dec) > 0 {
			f.deliver(payload[0]-'0', dec)
		}
		return
	}
	if len(payload) > 1 {
		f.deliver(payload[0], payload[1:])
	}
}
