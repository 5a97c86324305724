package approval

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	neturl "net/url"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// Notification is the JSON body of a webhook delivery.
type Notification struct {
	// Event is approval.requested, .approved, .denied, .expired or
	// .cancelled.
	Event    string  `json:"event"`
	Approval Request `json:"approval"`
	// Text is the event for people; a Slack incoming webhook shows it as
	// the message.
	Text string `json:"text"`
}

// Text renders an event as one Slack-flavoured message (mrkdwn: *bold*,
// `code`), readable as plain text too.
func Text(event string, r Request) string {
	var b strings.Builder
	who := slackEscape(r.Requester.String())
	// In a code block, a ``` from the requester would end it.
	text := strings.ReplaceAll(slackEscape(r.Subject.Shown()), "```", "` ` `")
	r.Outcome, r.Resource = slackEscape(r.Outcome), slackEscape(r.Resource)
	params := make([]string, len(r.Subject.Params))
	for i, p := range r.Subject.Params {
		params[i] = slackEscape(p)
	}
	switch event {
	case EventRequested:
		fmt.Fprintf(&b, "*Approval needed* `%s`: %s wants to run on %s:\n```%s```\n", r.ID, who, r.Resource, clip(text, 1500))
		if len(params) > 0 {
			fmt.Fprintf(&b, "with parameters %s\n", clip(strings.Join(params, ", "), 500))
		}
		for _, n := range r.Needs {
			fmt.Fprintf(&b, "Rule `%s`: %s. Needs %d approval(s) from %s.\n", n.Rule, n.Reason, n.Count, strings.Join(n.Groups, " or "))
		}
		fmt.Fprintf(&b, "Expires %s. Approve: `gatehouse approvals approve %s --comment \"...\"`, or deny: `gatehouse approvals deny %s --comment \"...\"`",
			r.ExpiresAt.UTC().Format(time.RFC3339), r.ID, r.ID)
	default:
		fmt.Fprintf(&b, "*Approval %s* `%s` (%s on %s): %s", r.State, r.ID, who, r.Resource, r.Outcome)
	}
	return b.String()
}

// clip shortens s to at most n bytes, on a character boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// slackEscape escapes what Slack's mrkdwn reads as markup (<@U123> mentions,
// <!channel>, links): text from the requester must not ping or link.
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(Printable(s))
}

// NotifierStats count deliveries.
type NotifierStats struct {
	Delivered, Failed, Dropped atomic.Int64
}

// Notifier delivers webhook notifications in the background: Notify never
// blocks, and failed deliveries are retried with exponential backoff.
type Notifier struct {
	resolve func(ref string) (string, error)
	client  *http.Client
	log     *slog.Logger
	queue   chan delivery
	// Attempts and Backoff shape retries: retry i (from 1) waits
	// Backoff<<(i-1), at most 30s.
	Attempts int
	Backoff  time.Duration
	Stats    NotifierStats
}

type delivery struct {
	hook  bundle.Webhook
	event string
	body  []byte
}

// NewNotifier makes a notifier. resolve turns secret references (a
// webhook's secret, or its URL when written as a reference) into values.
func NewNotifier(resolve func(string) (string, error), log *slog.Logger) *Notifier {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Notifier{resolve: resolve, log: log, client: &http.Client{Timeout: 10 * time.Second},
		queue: make(chan delivery, 1024), Attempts: 6, Backoff: 500 * time.Millisecond}
}

// Notify queues the event for each of the request's webhooks. When the
// queue is full the event is dropped and logged: the data path never waits
// on a webhook.
func (n *Notifier) Notify(event string, r Request) {
	if len(r.Webhooks) == 0 {
		return
	}
	body, err := json.Marshal(Notification{Event: event, Approval: r.Public(), Text: Text(event, r)})
	if err != nil {
		n.log.Error("approval webhook: encoding", "err", err)
		return
	}
	seen := map[bundle.Webhook]bool{}
	for _, h := range r.Webhooks {
		if seen[h] {
			continue
		}
		seen[h] = true
		select {
		case n.queue <- delivery{hook: h, event: event, body: body}:
		default:
			n.Stats.Dropped.Add(1)
			n.log.Error("approval webhook: queue full, notification dropped", "approval", r.ID, "event", event)
		}
	}
}

// Run delivers until ctx ends, with a few deliveries in flight.
func (n *Notifier) Run(ctx context.Context) {
	const workers = 4
	done := make(chan struct{})
	for range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				select {
				case <-ctx.Done():
					return
				case d := <-n.queue:
					n.deliver(ctx, d)
				}
			}
		}()
	}
	for range workers {
		<-done
	}
}

func (n *Notifier) deliver(ctx context.Context, d delivery) {
	url := d.hook.URL
	if bundle.IsSecretRef(url) {
		v, err := n.resolve(url)
		if err != nil {
			n.Stats.Failed.Add(1)
			n.log.Error("approval webhook: URL reference", "event", d.event, "err", err)
			return
		}
		url = v
	}
	var sig string
	if d.hook.Secret != "" {
		key, err := n.resolve(d.hook.Secret)
		if err != nil {
			n.Stats.Failed.Add(1)
			n.log.Error("approval webhook: secret reference", "event", d.event, "err", err)
			return
		}
		m := hmac.New(sha256.New, []byte(key))
		m.Write(d.body)
		sig = "sha256=" + hex.EncodeToString(m.Sum(nil))
	}
	// Logs name the webhook by its reference, or by host: a URL may be
	// a secret (Slack's is).
	target := d.hook.URL
	if !bundle.IsSecretRef(target) {
		if i := strings.Index(target, "://"); i >= 0 {
			target = target[:i+3] + strings.SplitN(target[i+3:], "/", 2)[0]
		}
	}
	var last string
	for attempt := 0; attempt < n.Attempts; attempt++ {
		if attempt > 0 {
			wait := min(n.Backoff<<(attempt-1), 30*time.Second)
			select {
			case <-ctx.Done():
				n.Stats.Failed.Add(1)
				n.log.Warn("approval webhook: the gateway stopped before the delivery succeeded", "event", d.event, "webhook", target, "last_error", last)
				return
			case <-time.After(wait):
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(d.body))
		if err != nil {
			last = "the webhook URL is not a valid URL" // the error would quote it
			break
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "gatehouse-approvals")
		req.Header.Set("X-Gatehouse-Event", d.event)
		if sig != "" {
			req.Header.Set("X-Gatehouse-Signature", sig)
		}
		resp, err := n.client.Do(req)
		if err != nil {
			// A *url.Error quotes the URL; its cause does not.
			var ue *neturl.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			last = strings.ReplaceAll(err.Error(), url, target)
			continue
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			n.Stats.Delivered.Add(1)
			return
		}
		last = resp.Status
		if resp.StatusCode/100 == 4 && resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusRequestTimeout {
			break // the receiver refuses it; retrying will not help
		}
	}
	n.Stats.Failed.Add(1)
	n.log.Error("approval webhook: delivery failed", "event", d.event, "webhook", target, "last_error", last)
}
