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

// grant is something the policy allowed that the upstream uses later, by
// opening channels towards the caller: X11 (x11-req), the agent
// (auth-agent-req@openssh.com) or a remote forward (tcpip-forward). Each
// channel it brings is decided again, as req, under the bundle in force.
type grant struct {
	// req is the request as it was decided when granted.
	req *celpolicy.SSHRequest
	// approval is the approval that released the grant, when it was
	// reviewed: a review decision later is answered by it.
	approval string
	// addr and port are a remote forward's bind address and the port the
	// upstream bound (for cancel-tcpip-forward).
	addr string
	port uint32
}

// relayUpstreamChannels passes the channels the upstream opens towards
// the caller (X11, the agent, remote forwards) through, one by one, when
// the session is still admitted and what they belong to is still granted
// by the bundle in force; others are refused.
func (c *conn) relayUpstreamChannels(ctx context.Context, client *gossh.Client) {
	for _, kind := range []string{"x11", "auth-agent@openssh.com", "forwarded-tcpip"} {
		chans := client.HandleChannelOpen(kind)
		go func() {
			for nch := range chans {
				go c.relay(ctx, client, nch)
			}
		}()
	}
}

// relay decides one channel the upstream opens, records it, and relays it
// with its outcome (the bytes both ways, the duration). A channel whose
// grant the bundle in force no longer allows is refused and recorded; a
// remote forward is then also cancelled upstream, so that its port closes.
func (c *conn) relay(ctx context.Context, client *gossh.Client, nch gossh.NewChannel) {
	// The host's channels count against the connection's bound as the
	// caller's do: a caller's own command on the host could otherwise
	// connect to its remote forward without end, each connection a
	// channel and a recorded event.
	if n := c.channels.Add(1); int(n) > c.srv.cfg.MaxChannels {
		c.channels.Add(-1)
		_ = nch.Reject(gossh.ResourceShortage, fmt.Sprintf("gatehouse: at most %d channels per connection", c.srv.cfg.MaxChannels))
		return
	}
	defer c.channels.Add(-1)
	g, key, text := c.grantOf(nch)
	if g == nil || c.sconn == nil {
		_ = nch.Reject(gossh.Prohibited, "gatehouse: not granted by the gateway's policy")
		return
	}
	if !c.check(ctx, nil) {
		_ = nch.Reject(gossh.Prohibited, "gatehouse: the session has ended")
		return
	}
	// The grant's own request, as it was decided when granted. It is not
	// a request the caller makes: only a refusal counts.
	req := *g.req
	d := c.cs.Decide(&req, false)
	approval := ""
	if d.Effect == bundle.EffectReview {
		if g.approval != "" {
			// Still under review, and the grant was approved: the
			// approval covers what the grant brings while it lasts.
			approval = g.approval
			d.Effect = bundle.EffectAllow
			d.Reasons = append([]string{"granted under approval " + g.approval}, d.Reasons...)
		} else {
			// Allowed when granted, it now needs approval: a channel
			// cannot wait for approvers, so it is refused.
			d.Effect = bundle.EffectDeny
			d.Reasons = append([]string{"it now needs approval, which the grant does not have"}, d.Reasons...)
			c.cs.Tally(false)
		}
	}
	ref, err := c.cs.RecordRequest(core.Requested{Kind: req.Kind, Text: text, Request: &req, Decision: d, Approval: approval})
	if err != nil {
		_ = nch.Reject(gossh.Prohibited, c.cs.Unrecorded().Message)
		return
	}
	if d.Effect != bundle.EffectAllow {
		refusal := c.cs.Denial(d, &req)
		if req.Kind == "remote_forward" {
			// The host stops listening before this connection drops.
			c.cancelRemoteForward(client, key)
		}
		_ = nch.Reject(gossh.Prohibited, fmt.Sprintf("%s (%s, decided again under bundle revision %d)", refusal.Message, text, d.BundleRevision))
		return
	}
	start := time.Now()
	in, out, err := c.pipeChannel(nch)
	o := core.Outcome{Duration: time.Since(start), Bytes: in + out}
	if err != nil {
		o.Error = err.Error()
	}
	c.cs.NoteOutcome(ref, o)
}

// grantOf finds the grant a channel from the upstream belongs to (nil when
// none), the remote forward's key, and the channel as the recording
// names it.
func (c *conn) grantOf(nch gossh.NewChannel) (g *grant, key, text string) {
	c.allowMu.Lock()
	defer c.allowMu.Unlock()
	switch nch.ChannelType() {
	case "x11":
		var p struct {
			OrigAddr string
			OrigPort uint32
		}
		if gossh.Unmarshal(nch.ExtraData(), &p) != nil {
			return nil, "", ""
		}
		return c.x11, "", "x11 connection from " + net.JoinHostPort(p.OrigAddr, strconv.Itoa(int(p.OrigPort)))
	case "auth-agent@openssh.com":
		return c.agent, "", "agent connection"
	case "forwarded-tcpip":
		var p struct {
			Addr     string
			Port     uint32
			OrigAddr string
			OrigPort uint32
		}
		if gossh.Unmarshal(nch.ExtraData(), &p) != nil {
			return nil, "", ""
		}
		key = net.JoinHostPort(p.Addr, strconv.Itoa(int(p.Port)))
		return c.remoteForward[key], key, "connection to remote forward " + key + " from " + net.JoinHostPort(p.OrigAddr, strconv.Itoa(int(p.OrigPort)))
	}
	return nil, "", ""
}

// cancelRemoteForward withdraws a remote forward the bundle in force no
// longer allows: the grant is dropped, and the upstream is told to stop
// listening (once, whichever refused channel comes first).
func (c *conn) cancelRemoteForward(client *gossh.Client, key string) {
	c.allowMu.Lock()
	g := c.remoteForward[key]
	delete(c.remoteForward, key)
	c.allowMu.Unlock()
	if g == nil {
		return
	}
	payload := gossh.Marshal(struct {
		Addr string
		Port uint32
	}{g.addr, g.port})
	if ok, _, err := client.SendRequest("cancel-tcpip-forward", true, payload); err != nil || !ok {
		c.log.Warn("the upstream did not cancel a revoked remote forward; its connections are refused", "bind", key, "err", err)
		return
	}
	c.log.Info("remote forward cancelled: the bundle in force no longer allows it", "bind", key)
}

// pipeChannel opens the same channel towards the caller and copies both
// ways until either side closes; up and down are the bytes each way.
func (c *conn) pipeChannel(nch gossh.NewChannel) (up, down int64, err error) {
	callerCh, callerReqs, err := c.sconn.OpenChannel(nch.ChannelType(), nch.ExtraData())
	if err != nil {
		_ = nch.Reject(gossh.ConnectionFailed, "gatehouse: the caller refused the channel")
		return 0, 0, fmt.Errorf("the caller refused the channel: %w", err)
	}
	upCh, upReqs, err := nch.Accept()
	if err != nil {
		callerCh.Close()
		return 0, 0, fmt.Errorf("accept the upstream's channel: %w", err)
	}
	go gossh.DiscardRequests(callerReqs)
	go gossh.DiscardRequests(upReqs)
	up, down = splice(upCh, callerCh)
	return up, down, nil
}
