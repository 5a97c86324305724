package recorder

import (
	"io"
	"os"
	"path/filepath"
)

// WithOnSeal calls fn with the session's id once End has closed its
// recording: sealed, its seal durable and in the ledger, or, when End
// failed, closed as it is (the next Open crash-seals it). Nothing writes
// to the recording afterwards, so fn may hand it on, to an upload for
// example; the local write has already happened, so forwarding never comes
// before it. fn is called with the session's lock held: it must not block.
func WithOnSeal(fn func(session string)) Option { return func(r *Recorder) { r.onSeal = fn } }

// WithOnStart calls fn with a session's id and its start event (as
// written: type, session, time and format filled in) once the recording has
// begun and the ledger names it. It is called on the session's own path
// before anything is forwarded, so it must not block: a catalogue of open
// sessions (the session index) queues what it is told.
func WithOnStart(fn func(session string, start Event)) Option {
	return func(r *Recorder) { r.onStart = fn }
}

// LedgerSnapshot returns the ledger's durable entries, whole lines only:
// a copy that never holds an entry a crash could take back.
func (r *Recorder) LedgerSnapshot() ([]byte, error) {
	_, size := r.l.durableEnd()
	f, err := os.Open(filepath.Join(r.dir, LedgerName))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, size)
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, err
	}
	return buf, nil
}
