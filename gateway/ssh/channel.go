package ssh

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// channel handles a channel the caller opens: a session, or a local
// forward (direct-tcpip). Anything else is refused.
func (c *conn) channel(ctx context.Context, nch gossh.NewChannel) {
	if n := c.channels.Add(1); int(n) > c.srv.cfg.MaxChannels {
		c.channels.Add(-1)
		_ = nch.Reject(gossh.ResourceShortage, fmt.Sprintf("gatehouse: at most %d channels per connection", c.srv.cfg.MaxChannels))
		return
	}
	defer c.channels.Add(-1)
	c.cs.Touch()
	if ref := c.cs.Check(ctx); ref != nil {
		_ = nch.Reject(gossh.Prohibited, ref.Message)
		c.end(ref.Message)
		return
	}
	switch nch.ChannelType() {
	case "session":
		c.session(ctx, nch)
	case "direct-tcpip":
		c.forward(ctx, nch)
	default:
		_ = nch.Reject(gossh.UnknownChannelType, fmt.Sprintf("gatehouse: channel type %q is not supported", nch.ChannelType()))
	}
}

// decided is a request the core decided and recorded: run it (ref is its
// recorded event), or refuse it with why.
type decided struct {
	d       celpolicy.Decision
	ref     int
	refusal *core.Refusal
	// gone: the session ended while the request was held.
	gone bool
	// approval is the approval that released a reviewed request.
	approval string
}

// decide decides and records a request; a review is held when the request
// can wait (hold), and otherwise refused with the approval's id. text is
// what the recording and approvers read.
func (c *conn) decide(ctx context.Context, kind, text string, req *celpolicy.SSHRequest, hold *holdSpec) decided {
	d := c.cs.Decide(req, true)
	if d.Effect == bundle.EffectReview {
		h := core.Held{Kind: kind, Text: text, Request: req, Decision: d, Immediate: hold == nil,
			Bind: func() (string, error) { return requestHash(req), nil }}
		h.Subject.Text = text
		if hold != nil {
			h.Notify, h.Watch = hold.notify, hold.watch
		}
		v := c.cs.Hold(ctx, h)
		switch {
		case v.Gone:
			return decided{gone: true}
		case v.End != nil:
			c.end(v.End.Message)
			return decided{refusal: v.End, gone: true}
		}
		return decided{d: v.Decision, ref: v.Ref, refusal: v.Refusal, approval: v.Approval}
	}
	ref, err := c.cs.RecordRequest(core.Requested{Kind: kind, Text: text, Request: req, Decision: d})
	if err != nil {
		return decided{d: d, refusal: c.cs.Unrecorded()}
	}
	if d.Effect != bundle.EffectAllow {
		return decided{d: d, ref: ref, refusal: c.cs.Denial(d, req)}
	}
	return decided{d: d, ref: ref}
}

// forward handles a local forward (ssh -L, direct-tcpip): decided by its
// destination, then relayed through the upstream host.
func (c *conn) forward(ctx context.Context, nch gossh.NewChannel) {
	var p struct {
		DestAddr string
		DestPort uint32
		OrigAddr string
		OrigPort uint32
	}
	if err := gossh.Unmarshal(nch.ExtraData(), &p); err != nil || p.DestPort > 65535 {
		_ = nch.Reject(gossh.ConnectionFailed, "gatehouse: malformed direct-tcpip request")
		return
	}
	if err := destinationHost(p.DestAddr); err != nil {
		// Decided as written, resolved by the host as it reads it: only
		// one spelling of an address passes (forwardhost.go).
		_ = nch.Reject(gossh.Prohibited, "gatehouse: forward refused: "+err.Error())
		return
	}
	req := &celpolicy.SSHRequest{Kind: "forward", ForwardHost: p.DestAddr, ForwardPort: int64(p.DestPort)}
	text := "forward to " + net.JoinHostPort(p.DestAddr, strconv.Itoa(int(p.DestPort)))
	dec := c.decide(ctx, "forward", text, req, nil)
	if dec.gone {
		_ = nch.Reject(gossh.Prohibited, "gatehouse: the session has ended")
		return
	}
	if dec.refusal != nil {
		_ = nch.Reject(gossh.Prohibited, refusalText(dec.refusal))
		return
	}
	start := time.Now()
	client, err := c.upstream(ctx)
	if err != nil {
		_ = nch.Reject(gossh.ConnectionFailed, "gatehouse: "+err.Error())
		c.cs.NoteOutcome(dec.ref, core.Outcome{Duration: time.Since(start), Error: err.Error()})
		return
	}
	up, upReqs, err := client.OpenChannel("direct-tcpip", nch.ExtraData())
	if err != nil {
		_ = nch.Reject(gossh.ConnectionFailed, "gatehouse: the upstream refused the forward: "+err.Error())
		c.cs.NoteOutcome(dec.ref, core.Outcome{Duration: time.Since(start), Error: err.Error()})
		return
	}
	down, downReqs, err := nch.Accept()
	if err != nil {
		up.Close()
		return
	}
	go gossh.DiscardRequests(upReqs)
	go gossh.DiscardRequests(downReqs)
	in, out := splice(down, up)
	c.cs.NoteOutcome(dec.ref, core.Outcome{Duration: time.Since(start), Bytes: in + out})
}

// globalRequests handles the caller's connection-wide requests: a remote
// forward (ssh -R, tcpip-forward) is decided by its bind address; others
// are refused.
func (c *conn) globalRequests(ctx context.Context, reqs <-chan *gossh.Request) {
	for r := range reqs {
		switch r.Type {
		case "tcpip-forward", "cancel-tcpip-forward":
			c.remoteForwardRequest(ctx, r)
		default:
			if r.WantReply {
				_ = r.Reply(false, nil)
			}
		}
	}
}

func (c *conn) remoteForwardRequest(ctx context.Context, r *gossh.Request) {
	var p struct {
		Addr string
		Port uint32
	}
	if err := gossh.Unmarshal(r.Payload, &p); err != nil || p.Port > 65535 {
		_ = r.Reply(false, nil)
		return
	}
	key := net.JoinHostPort(p.Addr, strconv.Itoa(int(p.Port)))
	var g *grant
	if r.Type == "tcpip-forward" {
		if !c.check(ctx, nil) {
			_ = r.Reply(false, nil)
			return
		}
		if err := canonicalHost(p.Addr); err != nil && p.Addr != "*" {
			c.log.Info("remote forward refused", "bind", key, "err", err)
			_ = r.Reply(false, nil)
			return
		}
		req := &celpolicy.SSHRequest{Kind: "remote_forward", ForwardHost: p.Addr, ForwardPort: int64(p.Port)}
		dec := c.decide(ctx, "remote_forward", "remote forward from "+key, req, nil)
		if dec.refusal != nil || dec.gone {
			c.log.Info("remote forward refused", "bind", key)
			_ = r.Reply(false, nil)
			return
		}
		g = &grant{req: req, approval: dec.approval, addr: p.Addr, port: p.Port}
	}
	client, err := c.upstream(ctx)
	if err != nil {
		_ = r.Reply(false, nil)
		return
	}
	ok, reply, err := client.SendRequest(r.Type, true, r.Payload)
	if err != nil {
		ok = false
	}
	if ok && r.Type == "tcpip-forward" {
		c.allowMu.Lock()
		if p.Port == 0 && len(reply) >= 4 {
			// The upstream chose the port: forwarded channels name it.
			var bound struct{ Port uint32 }
			if gossh.Unmarshal(reply, &bound) == nil {
				key = net.JoinHostPort(p.Addr, strconv.Itoa(int(bound.Port)))
				g.port = bound.Port
			}
		}
		c.remoteForward[key] = g
		c.allowMu.Unlock()
	}
	if r.Type == "cancel-tcpip-forward" {
		c.allowMu.Lock()
		delete(c.remoteForward, key)
		c.allowMu.Unlock()
	}
	_ = r.Reply(ok, reply)
}
