package ssh

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// holdSpec says how a request that can wait for approvers waits: the
// caller hears of it on stderr, and a disconnect withdraws it.
type holdSpec struct {
	notify func(approval.Request, time.Duration) error
	watch  func() (<-chan struct{}, func())
}

// requestHash binds an approval to exactly one SSH request: its kind and
// every field that says what it does, each length-prefixed. For an exec
// that is the command line byte for byte, which is what the upstream's
// shell runs.
func requestHash(r *celpolicy.SSHRequest) string {
	h := sha256.New()
	h.Write([]byte("gatehouse/ssh/v1\x00"))
	field := func(s string) {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field(r.Kind)
	field(r.Command)
	field(r.Subsystem)
	field(r.ForwardHost)
	var port [8]byte
	binary.BigEndian.PutUint64(port[:], uint64(r.ForwardPort))
	h.Write(port[:])
	field(r.Env)
	field(r.Term)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// stderrHold is how an exec waits: three lines on the caller's stderr,
// then the wait; the caller's leaving (the channel or the connection
// closing) withdraws the request.
func (c *conn) stderrHold(stderr io.Writer, closed <-chan struct{}) *holdSpec {
	return &holdSpec{
		notify: func(r approval.Request, wait time.Duration) error {
			msg, detail, hint := core.HoldNotice(&r, "command", wait)
			_, err := io.WriteString(stderr, msg+"\r\n"+detail+"\r\n"+hint+"\r\n")
			return err
		},
		watch: func() (<-chan struct{}, func()) {
			gone := make(chan struct{})
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				select {
				case <-closed:
					close(gone)
				case <-c.gone:
					close(gone)
				case <-stop:
				}
			}()
			return gone, func() { close(stop); <-done }
		},
	}
}

// refusalText is a refusal as one block of lines for the caller.
func refusalText(r *core.Refusal) string {
	lines := []string{r.Message}
	if r.Detail != "" {
		lines = append(lines, r.Detail)
	}
	hint := r.Hint
	if hint == "" && r.Code == core.Denied {
		hint = "Run `gatehouse eval` with this request to see the decision explained."
	}
	if hint != "" {
		lines = append(lines, hint)
	}
	return strings.Join(lines, "\n")
}
