package approval

import (
	"log/slog"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/clock"
)

// options are the settings every store takes; a store ignores those it
// has no use for.
type options struct {
	clock        clock.Clock
	log          *slog.Logger
	notify       func(string, Request)
	pollInterval time.Duration
	rowKey       []byte
}

// Option configures a store (FileStore or PGStore).
type Option func(*options)

// DefaultPollInterval is how often a PGStore looks in the database for
// settlements it was not told of, and for requests past their expiry.
const DefaultPollInterval = time.Second

func newOptions(opts []Option) options {
	o := options{clock: clock.Real, log: slog.New(slog.DiscardHandler), pollInterval: DefaultPollInterval}
	for _, fn := range opts {
		fn(&o)
	}
	return o
}

// WithClock sets the time source (tests).
func WithClock(c clock.Clock) Option { return func(o *options) { o.clock = c } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithNotify sets what is told of every request event (the webhook
// notifier). It must not block. A PGStore tells it of the events its own
// replica caused, so that each event is told once, not once per replica.
func WithNotify(fn func(event string, r Request)) Option {
	return func(o *options) { o.notify = fn }
}

// WithPollInterval sets how often a PGStore polls the database as a
// fallback to LISTEN/NOTIFY (default DefaultPollInterval). The file store
// does not poll.
func WithPollInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.pollInterval = d
		}
	}
}

// WithRowKey authenticates a PGStore's rows with key, which every replica
// is given and the database does not hold: each row is written with an
// HMAC-SHA256 of its id and request, and a row whose MAC does not verify
// (or that has none) is not read, as if it were not there. Without it, the
// store trusts the database: whoever can write gatehouse_approvals can
// insert an approved request, or approve a pending one. The file store
// ignores it.
func WithRowKey(key []byte) Option {
	return func(o *options) { o.rowKey = append([]byte(nil), key...) }
}

// MinRowKeyBytes is the shortest key WithRowKey is given by the gateway.
const MinRowKeyBytes = 32

// tell tells the notify hook of an event.
func (o *options) tell(event string, r *Request) {
	if o.notify != nil {
		o.notify(event, r.Clone())
	}
}
