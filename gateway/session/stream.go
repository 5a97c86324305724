package session

import (
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

// flushBytes and flushEvery bound what a stream keeps before it notes its
// frames in the recording: output events are appended without a sync of
// their own (the command was durable before it ran), in batches.
const (
	flushBytes = 32 << 10
	flushEvery = 250 * time.Millisecond
)

// Stream records one direction of a stream's data (an SSH channel, a
// Kubernetes exec) as asciicast frames
// ("o" output, "i" input), up to a limit; past it the bytes are counted,
// and a marker says how many were not kept. It never fails a write: the
// data path does not wait for the recording of what already happened.
type Stream struct {
	cs     *Session
	kind   string
	limit  int64
	origin time.Time

	mu      sync.Mutex
	ref     int
	frames  []recorder.Frame
	pending int
	last    time.Time
	total   int64
	kept    int64
	partial []byte // an incomplete UTF-8 sequence from the last write
}

// NewStream records a stream of session cs: kind "o" (output) or "i"
// (input), keeping at most limit bytes.
func NewStream(cs *Session, kind string, limit int64) *Stream {
	return &Stream{cs: cs, kind: kind, limit: limit, origin: cs.Started(), last: time.Now()}
}

// Attach sets the recorded request the frames belong to.
func (s *Stream) Attach(ref int) {
	s.mu.Lock()
	s.ref = ref
	s.mu.Unlock()
}

// SetLimit changes how many bytes the stream keeps.
func (s *Stream) SetLimit(n int64) {
	s.mu.Lock()
	s.limit = n
	s.mu.Unlock()
}

// Write records p (or counts it, past the limit).
func (s *Stream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total += int64(len(p))
	if s.kept >= s.limit {
		return len(p), nil
	}
	take := p
	if room := s.limit - s.kept; int64(len(take)) > room {
		take = take[:room]
	}
	s.kept += int64(len(take))
	// Frames hold text: a multi-byte character split across writes is
	// joined before it is written. (Bytes that are not UTF-8 at all, such
	// as binary output, are written as U+FFFD: recordings hold what a
	// terminal shows, not files.)
	data := append(s.partial, take...)
	s.partial = nil
	for i := len(data) - 1; i >= 0 && i >= len(data)-utf8.UTFMax; i-- {
		if utf8.RuneStart(data[i]) {
			if !utf8.FullRune(data[i:]) {
				s.partial = append([]byte(nil), data[i:]...)
				data = data[:i]
			}
			break
		}
	}
	if len(data) > 0 {
		s.frames = append(s.frames, recorder.Frame{T: s.since(), Stream: s.kind, Data: string(data)})
		s.pending += len(data)
	}
	if s.pending >= flushBytes || time.Since(s.last) >= flushEvery {
		s.flushLocked()
	}
	return len(p), nil
}

func (s *Stream) since() float64 {
	return float64(time.Since(s.origin).Microseconds()) / 1e6
}

func (s *Stream) flushLocked() {
	if len(s.frames) > 0 && s.ref != 0 {
		s.cs.NoteOutput(s.ref, s.frames)
	}
	s.frames, s.pending, s.last = nil, 0, time.Now()
}

// Close notes what is left, and a marker when bytes went unrecorded. It
// returns the bytes the stream carried.
func (s *Stream) Close() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.partial) > 0 {
		s.frames = append(s.frames, recorder.Frame{T: s.since(), Stream: s.kind, Data: string(s.partial)})
		s.partial = nil
	}
	if s.total > s.kept {
		s.frames = append(s.frames, recorder.Frame{T: s.since(), Stream: "m",
			Data: fmt.Sprintf("gatehouse: %d byte(s) of %s beyond the recording limit were not recorded", s.total-s.kept, s.name())})
	}
	s.flushLocked()
	return s.total
}

func (s *Stream) name() string {
	if s.kind == "i" {
		return "input"
	}
	return "output"
}
