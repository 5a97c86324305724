package kubernetes

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// WebSocket opcodes (RFC 6455 section 5.2).
const (
	opCont   = 0x0
	opText   = 0x1
	opBinary = 0x2
	opClose  = 0x8
	opPing   = 0x9
	opPong   = 0xa
)

// wsFrame builds one WebSocket frame per RFC 6455: a client's frames are
// masked (key non-nil), a server's are not. lenBits forces the length
// encoding (7, 16 or 64); 0 picks the shortest, as senders do.
type wsFrame struct {
	fin     bool
	op      byte
	payload []byte
	key     []byte
	lenBits int
}

func (f wsFrame) bytes() []byte {
	var b []byte
	b0 := f.op & 0x0f
	if f.fin {
		b0 |= 0x80
	}
	b = append(b, b0)
	var m byte
	if f.key != nil {
		m = 0x80
	}
	n := len(f.payload)
	bits := f.lenBits
	if bits == 0 {
		switch {
		case n <= 125:
			bits = 7
		case n <= 0xffff:
			bits = 16
		default:
			bits = 64
		}
	}
	switch bits {
	case 7:
		b = append(b, m|byte(n))
	case 16:
		b = append(b, m|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, m|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if f.key != nil {
		b = append(b, f.key...)
	}
	for i, c := range f.payload {
		if f.key != nil {
			c ^= f.key[i%4]
		}
		b = append(b, c)
	}
	return b
}

func frames(fs ...wsFrame) []byte {
	var b []byte
	for _, f := range fs {
		b = append(b, f.bytes()...)
	}
	return b
}

var clientKey = []byte{0x37, 0xfa, 0x21, 0x3d}

// server (unmasked) and client (masked) data frames.
func srvBin(fin bool, op byte, p []byte) wsFrame { return wsFrame{fin: fin, op: op, payload: p} }
func cliBin(fin bool, op byte, p []byte) wsFrame {
	return wsFrame{fin: fin, op: op, payload: p, key: clientKey}
}

// chanMsg is a channel protocol's binary message: the channel, then data.
func chanMsg(ch byte, data string) []byte { return append([]byte{ch}, data...) }

// b64Msg is a base64 channel protocol's text message.
func b64Msg(ch byte, data string) []byte {
	return []byte(string('0'+ch) + base64.StdEncoding.EncodeToString([]byte(data)))
}

type delivery struct {
	ch   byte
	data string
}

// run feeds data to a new frameReader in the given pieces and returns what
// it delivered and the bytes it counted.
func run(b64 bool, pieces [][]byte) ([]delivery, int64) {
	var got []delivery
	f := &frameReader{base64: b64, deliver: func(ch byte, data []byte) {
		got = append(got, delivery{ch, string(data)})
	}}
	for _, p := range pieces {
		f.feed(p)
	}
	return got, f.bytes
}

// splits are the ways a stream is cut: whole, byte by byte, and in random
// chunks.
func splits(data []byte, rng *rand.Rand) map[string][][]byte {
	out := map[string][][]byte{"whole": {data}}
	var bytewise [][]byte
	for i := range data {
		bytewise = append(bytewise, data[i:i+1])
	}
	out["byte by byte"] = bytewise
	for r := range 3 {
		var chunks [][]byte
		for rest := data; len(rest) > 0; {
			n := 1 + rng.IntN(min(len(rest), 97))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		out[fmt.Sprintf("random chunks %d", r)] = chunks
	}
	return out
}

func TestFrameReader(t *testing.T) {
	long300 := strings.Repeat("0123456789", 30)
	long70k := strings.Repeat("abcdefghijklmnopqrstuvwxyz", 70000/26+1)[:70000]
	tests := []struct {
		name   string
		base64 bool
		data   []byte
		want   []delivery
	}{
		{"server stdout", false, frames(srvBin(true, opBinary, chanMsg(1, "hello\r\n"))), []delivery{{1, "hello\r\n"}}},
		{"client stdin, masked", false, frames(cliBin(true, opBinary, chanMsg(0, "ls -l\n"))), []delivery{{0, "ls -l\n"}}},
		{"stdout and stderr", false, frames(
			srvBin(true, opBinary, chanMsg(1, "out")),
			srvBin(true, opBinary, chanMsg(2, "err")),
			srvBin(true, opBinary, chanMsg(3, `{"status":"Success"}`)),
		), []delivery{{1, "out"}, {2, "err"}, {3, `{"status":"Success"}`}}},
		{"text frame on a binary protocol", false, frames(srvBin(true, opText, chanMsg(1, "t"))), []delivery{{1, "t"}}},
		{"16-bit length", false, frames(srvBin(true, opBinary, chanMsg(2, long300))), []delivery{{2, long300}}},
		{"16-bit length, masked", false, frames(cliBin(true, opBinary, chanMsg(0, long300))), []delivery{{0, long300}}},
		{"64-bit length", false, frames(srvBin(true, opBinary, chanMsg(1, long70k))), []delivery{{1, long70k}}},
		{"64-bit length, masked", false, frames(cliBin(true, opBinary, chanMsg(0, long70k))), []delivery{{0, long70k}}},
		{"non-minimal lengths", false, frames(
			wsFrame{fin: true, op: opBinary, payload: chanMsg(1, "a"), lenBits: 16},
			wsFrame{fin: true, op: opBinary, payload: chanMsg(1, "b"), lenBits: 64, key: clientKey},
		), []delivery{{1, "a"}, {1, "b"}}},
		// Each data frame is a message of its own, channel byte first, as
		// the API server reads them (x/net/websocket frame by frame): a
		// continuation's first byte is its channel.
		{"fragmented with a ping and a pong inside", false, frames(
			srvBin(false, opBinary, chanMsg(1, "hel")),
			srvBin(true, opPing, []byte("p")),
			srvBin(false, opCont, []byte("lo")),
			srvBin(true, opPong, nil),
			srvBin(true, opCont, []byte(" world")),
			srvBin(true, opBinary, chanMsg(2, "next")),
		), []delivery{{1, "hel"}, {'l', "o"}, {' ', "world"}, {2, "next"}}},
		{"fragmented, masked, channel byte alone first", false, frames(
			cliBin(false, opBinary, []byte{0}),
			cliBin(false, opCont, []byte("ab")),
			cliBin(true, opCont, []byte("c")),
		), []delivery{{'a', "b"}}},
		{"a continuation carries stdin the server runs: recorded as such", false, frames(
			cliBin(false, opBinary, chanMsg(2, "x")),
			cliBin(true, opCont, chanMsg(0, "rm -rf /\n")),
		), []delivery{{2, "x"}, {0, "rm -rf /\n"}}},
		{"a continuation outside a message, and a message inside one", false, frames(
			srvBin(true, opCont, chanMsg(1, "x")),
			srvBin(false, opBinary, chanMsg(1, "a")),
			srvBin(true, opBinary, chanMsg(1, "b")),
		), []delivery{{1, "x"}, {1, "a"}, {1, "b"}}},
		{"empty messages deliver nothing", false, frames(
			srvBin(true, opBinary, nil),
			srvBin(true, opBinary, []byte{1}),
			srvBin(true, opBinary, chanMsg(1, "x")),
		), []delivery{{1, "x"}}},
		{"control frames deliver nothing", false, frames(
			srvBin(true, opPing, []byte("ping")),
			srvBin(true, opPong, []byte("pong")),
			cliBin(true, opPing, nil),
			srvBin(true, opClose, []byte{0x03, 0xe8}),
		), nil},
		{"v5 close message", false, frames(cliBin(true, opBinary, []byte{255, 0})), []delivery{{255, "\x00"}}},
		{"resize", false, frames(cliBin(true, opBinary, chanMsg(4, `{"Width":80,"Height":24}`))), []delivery{{4, `{"Width":80,"Height":24}`}}},

		{"base64 stdout", true, frames(srvBin(true, opText, b64Msg(1, "hello"))), []delivery{{1, "hello"}}},
		{"base64 stdin, masked", true, frames(cliBin(true, opText, b64Msg(0, "id\n"))), []delivery{{0, "id\n"}}},
		{"base64 error channel", true, frames(srvBin(true, opText, b64Msg(3, "boom"))), []delivery{{3, "boom"}}},
		{"base64 fragmented with a ping inside", true, frames(
			srvBin(false, opText, []byte("1aGVs")),
			srvBin(true, opPing, nil),
			srvBin(false, opCont, []byte("bG8g")),
			srvBin(true, opCont, []byte("d29ybGQ=")),
		), []delivery{{1, "hel"}}},
		{"base64 long", true, frames(srvBin(true, opText, b64Msg(2, long70k))), []delivery{{2, long70k}}},
		{"base64 bad data is skipped", true, frames(
			srvBin(true, opText, []byte("1!!!not base64")),
			srvBin(true, opText, []byte("xaGVsbG8=")),
			srvBin(true, opText, []byte("1")),
			srvBin(true, opText, nil),
			srvBin(true, opText, b64Msg(1, "ok")),
		), []delivery{{1, "ok"}}},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range tests {
		for how, pieces := range splits(tc.data, rng) {
			got, n := run(tc.base64, pieces)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("%s (%s): delivered %s, want %s", tc.name, how, show(got), show(tc.want))
			}
			if n != int64(len(tc.data)) {
				t.Errorf("%s (%s): counted %d bytes, want %d", tc.name, how, n, len(tc.data))
			}
		}
	}
}

func show(ds []delivery) string {
	var b strings.Builder
	for _, d := range ds {
		s := d.data
		if len(s) > 40 {
			s = fmt.Sprintf("%s...(%d bytes)", s[:40], len(s))
		}
		fmt.Fprintf(&b, "[%d %q] ", d.ch, s)
	}
	return b.String()
}

// TestFrameReaderBroken: framing that cannot be read delivers one marker
// on the error channel and nothing after it, and the bytes are still
// counted.
func TestFrameReaderBroken(t *testing.T) {
	good := frames(srvBin(true, opBinary, chanMsg(1, "before")))
	after := frames(srvBin(true, opBinary, chanMsg(1, "after")), srvBin(true, opBinary, chanMsg(2, "more")))
	oversize := []byte{0x82, 127}
	oversize = binary.BigEndian.AppendUint64(oversize, maxFrame+1)
	huge := []byte{0x82, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	tests := []struct {
		name   string
		base64 bool
		bad    []byte
		reason string
	}{
		{"unknown data opcode", false, frames(srvBin(true, 0x3, []byte("x"))), "unknown opcode 0x3"},
		{"unknown control opcode", false, frames(srvBin(true, 0xb, nil)), "unknown opcode 0xb"},
		{"oversize 64-bit length", false, oversize, "larger than 16 MiB"},
		{"huge 64-bit length", false, huge, "larger than 16 MiB"},
		{"oversize, masked", false, append([]byte{0x82, 0xff}, binary.BigEndian.AppendUint64(nil, 1<<40)...), "larger than 16 MiB"},
		{"fragmented ping", false, frames(srvBin(false, opPing, nil)), "control frame"},
		{"long ping", false, frames(srvBin(true, opPing, bytes.Repeat([]byte{'p'}, 126))), "control frame"},
		{"base64 unknown opcode", true, frames(srvBin(true, 0x7, []byte("1eA=="))), "unknown opcode 0x7"},
	}
	rng := rand.New(rand.NewPCG(3, 4))
	goodB64 := frames(srvBin(true, opText, b64Msg(1, "before")))
	afterB64 := frames(srvBin(true, opText, b64Msg(1, "after")))
	for _, tc := range tests {
		g, a := good, after
		if tc.base64 {
			g, a = goodB64, afterB64
		}
		data := append(append(append([]byte{}, g...), tc.bad...), a...)
		for how, pieces := range splits(data, rng) {
			got, n := run(tc.base64, pieces)
			if n != int64(len(data)) {
				t.Errorf("%s (%s): counted %d bytes, want %d", tc.name, how, n, len(data))
			}
			// Everything before the break, then one marker, then nothing.
			var wantFirst []delivery
			wantFirst = []delivery{{1, "before"}}
			if len(got) != len(wantFirst)+1 || !reflect.DeepEqual(got[:len(wantFirst)], wantFirst) {
				t.Errorf("%s (%s): delivered %s", tc.name, how, show(got))
				continue
			}
			last := got[len(got)-1]
			if last.ch != 3 || !strings.Contains(last.data, "gatehouse: the stream's framing could not be read") || !strings.Contains(last.data, tc.reason) {
				t.Errorf("%s (%s): marker %d %q, want channel 3 naming %q", tc.name, how, last.ch, last.data, tc.reason)
			}
		}
	}
}

// TestFrameReaderIncomplete: a frame cut short delivers nothing, and
// what arrives later completes it.
func TestFrameReaderIncomplete(t *testing.T) {
	data := frames(cliBin(true, opBinary, chanMsg(0, strings.Repeat("x", 200))))
	var got []delivery
	f := &frameReader{deliver: func(ch byte, d []byte) { got = append(got, delivery{ch, string(d)}) }}
	for i := range len(data) - 1 {
		f.feed(data[i : i+1])
		if len(got) != 0 {
			t.Fatalf("delivered after %d of %d bytes", i+1, len(data))
		}
	}
	f.feed(data[len(data)-1:])
	if len(got) != 1 || got[0].ch != 0 || got[0].data != strings.Repeat("x", 200) {
		t.Fatalf("delivered %s", show(got))
	}
	if len(f.buf) != 0 {
		t.Errorf("%d bytes left buffered", len(f.buf))
	}
}

func TestFilterSubprotocols(t *testing.T) {
	tests := []struct {
		in   []string
		want []string
	}{
		{[]string{"v5.channel.k8s.io, v4.channel.k8s.io, v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io"},
			[]string{"v5.channel.k8s.io, v4.channel.k8s.io, v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io"}},
		{[]string{"v4.base64.channel.k8s.io", "base64.channel.k8s.io"}, []string{"v4.base64.channel.k8s.io, base64.channel.k8s.io"}},
		{[]string{"base64url.bearer.authorization.k8s.io.dG9r, v5.channel.k8s.io"}, []string{"v5.channel.k8s.io"}},
		{[]string{"binary.k8s.io, base64.binary.k8s.io"}, nil},
		{[]string{"v5.channel.k8s.io,chat,superchat"}, []string{"v5.channel.k8s.io"}},
		{[]string{"SPDY/3.1+portforward.k8s.io", "v2.portforward.k8s.io, portforward.k8s.io"},
			[]string{"SPDY/3.1+portforward.k8s.io, v2.portforward.k8s.io, portforward.k8s.io"}},
		{nil, nil},
	}
	for _, tc := range tests {
		h := http.Header{}
		for _, v := range tc.in {
			h.Add("Sec-Websocket-Protocol", v)
		}
		filterSubprotocols(h)
		if got := h.Values("Sec-Websocket-Protocol"); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("filterSubprotocols(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
