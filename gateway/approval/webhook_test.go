package approval_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
)

// delivered is one request a receiver got.
type delivered struct {
	path   string
	header http.Header
	body   []byte
}

// receiver is a webhook endpoint answering with the statuses of status in
// turn (the last one from then on), recording every request.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	got    []delivered
	calls  atomic.Int64
	status []int
}

func newReceiver(t *testing.T, status ...int) *receiver {
	t.Helper()
	if len(status) == 0 {
		status = []int{http.StatusOK}
	}
	rc := &receiver{status: status}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("receiver: reading the body: %v", err)
		}
		i := int(rc.calls.Add(1)) - 1
		rc.mu.Lock()
		rc.got = append(rc.got, delivered{path: r.URL.Path, header: r.Header.Clone(), body: body})
		rc.mu.Unlock()
		if r.Method != http.MethodPost {
			t.Errorf("receiver: method %s, want POST", r.Method)
		}
		w.WriteHeader(status[min(i, len(status)-1)])
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) deliveries() []delivered {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]delivered(nil), rc.got...)
}

// secrets resolves the references of the tests, as the gateway's secret
// resolver does.
func secrets(values map[string]string) func(string) (string, error) {
	return func(ref string) (string, error) {
		if v, ok := values[ref]; ok {
			return v, nil
		}
		return "", errors.New("no such secret")
	}
}

// runNotifier runs n until the test ends, and waits for it to stop.
func runNotifier(t *testing.T, n *approval.Notifier) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// fastNotifier retries at once, a few times.
func fastNotifier(resolve func(string) (string, error)) *approval.Notifier {
	n := approval.NewNotifier(resolve, nil)
	n.Attempts, n.Backoff = 3, time.Millisecond
	return n
}

// eventually polls cond until it holds, failing the test after d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so after %s", what, d)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// settledDeliveries waits until n has finished with want deliveries.
func settledDeliveries(t *testing.T, n *approval.Notifier, want int64) {
	t.Helper()
	eventually(t, 5*time.Second, "deliveries finished", func() bool {
		return n.Stats.Delivered.Load()+n.Stats.Failed.Load() >= want
	})
}

func hooked(r approval.Request, hooks ...bundle.Webhook) approval.Request {
	r.ID, r.State = "ap-testtesttesttest", approval.Pending
	r.Webhooks = hooks
	return r
}

func TestNotifyDelivers(t *testing.T) {
	rc := newReceiver(t)
	n := fastNotifier(secrets(nil))
	runNotifier(t, n)

	r := hooked(request(time.Now()), bundle.Webhook{URL: rc.URL + "/hook"})
	n.Notify(approval.EventRequested, r)
	settledDeliveries(t, n, 1)

	if d, f := n.Stats.Delivered.Load(), n.Stats.Failed.Load(); d != 1 || f != 0 {
		t.Fatalf("delivered %d, failed %d; want 1, 0", d, f)
	}
	got := rc.deliveries()
	if len(got) != 1 {
		t.Fatalf("%d deliveries, want 1", len(got))
	}
	d := got[0]
	if d.path != "/hook" {
		t.Errorf("path %q", d.path)
	}
	for k, want := range map[string]string{
		"Content-Type":          "application/json",
		"X-Gatehouse-Event":     approval.EventRequested,
		"User-Agent":            "gatehouse-approvals",
		"X-Gatehouse-Signature": "", // no secret, no signature
	} {
		if v := d.header.Get(k); v != want {
			t.Errorf("header %s = %q, want %q", k, v, want)
		}
	}
	var body approval.Notification
	if err := json.Unmarshal(d.body, &body); err != nil {
		t.Fatalf("body is not JSON: %v\n%s", err, d.body)
	}
	if body.Event != approval.EventRequested || body.Approval.ID != r.ID || body.Approval.Subject.Text != r.Subject.Text {
		t.Errorf("body %+v", body)
	}
	if body.Text == "" || !strings.Contains(body.Text, r.ID) {
		t.Errorf("text %q, want it to name %s", body.Text, r.ID)
	}
	// A Slack incoming webhook reads the top-level "text".
	var slack map[string]any
	if err := json.Unmarshal(d.body, &slack); err != nil {
		t.Fatal(err)
	}
	if text, ok := slack["text"].(string); !ok || text != body.Text {
		t.Errorf(`top-level "text" = %v`, slack["text"])
	}
}

func TestNotifySignsTheBody(t *testing.T) {
	rc := newReceiver(t)
	const key = "s3cret-hmac-key"
	n := fastNotifier(secrets(map[string]string{"env:HOOK_SECRET": key}))
	runNotifier(t, n)

	r := hooked(request(time.Now()), bundle.Webhook{URL: rc.URL, Secret: "env:HOOK_SECRET"})
	n.Notify(approval.EventDenied, r)
	settledDeliveries(t, n, 1)

	got := rc.deliveries()
	if len(got) != 1 {
		t.Fatalf("%d deliveries, want 1", len(got))
	}
	m := hmac.New(sha256.New, []byte(key))
	m.Write(got[0].body)
	want := "sha256=" + hex.EncodeToString(m.Sum(nil))
	if sig := got[0].header.Get("X-Gatehouse-Signature"); sig != want {
		t.Errorf("signature %q, want %q (HMAC-SHA256 of the exact body)", sig, want)
	}
	if strings.Contains(string(got[0].body), key) {
		t.Error("the body carries the secret")
	}
}

func TestNotifySecretReferenceThatDoesNotResolve(t *testing.T) {
	rc := newReceiver(t)
	n := fastNotifier(secrets(nil))
	runNotifier(t, n)

	// An unsigned delivery would let anyone forge events: nothing is sent.
	n.Notify(approval.EventRequested, hooked(request(time.Now()), bundle.Webhook{URL: rc.URL, Secret: "env:MISSING"}))
	settledDeliveries(t, n, 1)
	if f := n.Stats.Failed.Load(); f != 1 {
		t.Errorf("failed %d, want 1", f)
	}
	if c := rc.calls.Load(); c != 0 {
		t.Errorf("%d unsigned deliveries were sent", c)
	}
}

func TestNotifyRetries(t *testing.T) {
	tests := map[string]struct {
		status    []int
		wantCalls int64
		delivered bool
	}{
		"500 twice, then 200":        {[]int{500, 500, 200}, 3, true},
		"502, then 204":              {[]int{502, 204}, 2, true},
		"429 is retried":             {[]int{429, 200}, 2, true},
		"408 is retried":             {[]int{408, 200}, 2, true},
		"400 is not retried":         {[]int{400, 200}, 1, false},
		"404 is not retried":         {[]int{404, 200}, 1, false},
		"503 until attempts run out": {[]int{503}, 3, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rc := newReceiver(t, tc.status...)
			n := fastNotifier(secrets(map[string]string{"env:KEY": "k"}))
			runNotifier(t, n)

			n.Notify(approval.EventApproved, hooked(request(time.Now()), bundle.Webhook{URL: rc.URL, Secret: "env:KEY"}))
			settledDeliveries(t, n, 1)

			if c := rc.calls.Load(); c != tc.wantCalls {
				t.Errorf("%d calls, want %d", c, tc.wantCalls)
			}
			d, f := n.Stats.Delivered.Load(), n.Stats.Failed.Load()
			if tc.delivered && (d != 1 || f != 0) || !tc.delivered && (d != 0 || f != 1) {
				t.Errorf("delivered %d, failed %d; want delivered %v", d, f, tc.delivered)
			}
			// Every attempt carries the same body and signature.
			got := rc.deliveries()
			for _, x := range got[1:] {
				if string(x.body) != string(got[0].body) || x.header.Get("X-Gatehouse-Signature") != got[0].header.Get("X-Gatehouse-Signature") {
					t.Error("a retry differs from the first attempt")
				}
			}
		})
	}
}

func TestNotifyRetriesAnUnreachableReceiver(t *testing.T) {
	rc := newReceiver(t)
	url := rc.URL
	rc.Close() // nothing listens there now
	n := fastNotifier(secrets(nil))
	runNotifier(t, n)

	n.Notify(approval.EventRequested, hooked(request(time.Now()), bundle.Webhook{URL: url}))
	settledDeliveries(t, n, 1)
	if f := n.Stats.Failed.Load(); f != 1 {
		t.Errorf("failed %d, want 1", f)
	}
}

func TestNotifyResolvesAURLReference(t *testing.T) {
	rc := newReceiver(t)
	n := fastNotifier(secrets(map[string]string{"env:SLACK_WEBHOOK_URL": rc.URL + "/services/T000/B000/XXXX"}))
	runNotifier(t, n)

	n.Notify(approval.EventRequested, hooked(request(time.Now()), bundle.Webhook{URL: "env:SLACK_WEBHOOK_URL"}))
	settledDeliveries(t, n, 1)

	got := rc.deliveries()
	if len(got) != 1 || got[0].path != "/services/T000/B000/XXXX" {
		t.Fatalf("deliveries %+v, want one to the resolved URL", got)
	}
	// The body never names the URL it resolved to (Slack's URL is its
	// secret), nor the webhooks at all.
	if strings.Contains(string(got[0].body), "XXXX") || strings.Contains(string(got[0].body), "webhooks") {
		t.Errorf("body %s", got[0].body)
	}
}

func TestNotifyURLReferenceThatDoesNotResolve(t *testing.T) {
	n := fastNotifier(secrets(nil))
	runNotifier(t, n)
	n.Notify(approval.EventRequested, hooked(request(time.Now()), bundle.Webhook{URL: "env:NOT_SET"}))
	settledDeliveries(t, n, 1)
	if d, f := n.Stats.Delivered.Load(), n.Stats.Failed.Load(); d != 0 || f != 1 {
		t.Errorf("delivered %d, failed %d; want 0, 1", d, f)
	}
}

func TestNotifySendsOncePerDistinctWebhook(t *testing.T) {
	rc := newReceiver(t)
	n := fastNotifier(secrets(map[string]string{"env:KEY": "k"}))
	runNotifier(t, n)

	a := bundle.Webhook{URL: rc.URL + "/a"}
	b := bundle.Webhook{URL: rc.URL + "/b"}
	aSigned := bundle.Webhook{URL: rc.URL + "/a", Secret: "env:KEY"}
	// Two rules of one request may name the same webhook.
	n.Notify(approval.EventRequested, hooked(request(time.Now()), a, b, a, aSigned, b))
	settledDeliveries(t, n, 3)

	// Give a wrongly queued duplicate the time to arrive.
	time.Sleep(50 * time.Millisecond)
	paths := map[string]int{}
	for _, d := range rc.deliveries() {
		paths[d.path]++
	}
	if paths["/a"] != 2 || paths["/b"] != 1 || len(paths) != 2 {
		t.Errorf("deliveries by path %v, want /a twice (unsigned and signed) and /b once", paths)
	}
}

func TestNotifyNeverBlocks(t *testing.T) {
	// Nothing runs the notifier: its queue fills, and Notify drops.
	n := approval.NewNotifier(secrets(nil), nil)
	r := hooked(request(time.Now()), bundle.Webhook{URL: "http://127.0.0.1:9/hook"})

	done := make(chan int)
	go func() {
		queued := 0
		for n.Stats.Dropped.Load() == 0 && queued < 1_000_000 {
			n.Notify(approval.EventRequested, r)
			queued++
		}
		for range 10 {
			n.Notify(approval.EventRequested, r)
		}
		done <- queued
	}()
	select {
	case queued := <-done:
		if queued < 2 || queued == 1_000_000 {
			t.Fatalf("%d notifications before the first drop", queued)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Notify blocked on a full queue")
	}
	if d := n.Stats.Dropped.Load(); d != 11 {
		t.Errorf("dropped %d, want 11 (the first drop and 10 more)", d)
	}

	// Each distinct webhook is a delivery of its own, dropped on its own.
	two := hooked(request(time.Now()), bundle.Webhook{URL: "http://127.0.0.1:9/a"}, bundle.Webhook{URL: "http://127.0.0.1:9/b"})
	n.Notify(approval.EventApproved, two)
	if d := n.Stats.Dropped.Load(); d != 13 {
		t.Errorf("dropped %d, want 13", d)
	}
	// A request without webhooks queues nothing, so drops nothing.
	n.Notify(approval.EventApproved, hooked(request(time.Now())))
	if d := n.Stats.Dropped.Load(); d != 13 {
		t.Errorf("a request without webhooks was dropped: %d", d)
	}
	if n.Stats.Delivered.Load() != 0 || n.Stats.Failed.Load() != 0 {
		t.Error("deliveries happened without Run")
	}
}

func TestRunStopsWhileBackingOff(t *testing.T) {
	rc := newReceiver(t, http.StatusServiceUnavailable)
	n := approval.NewNotifier(secrets(nil), nil)
	n.Attempts, n.Backoff = 5, time.Hour

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.Run(ctx)
	}()
	n.Notify(approval.EventRequested, hooked(request(time.Now()), bundle.Webhook{URL: rc.URL}))
	eventually(t, 5*time.Second, "first attempt", func() bool { return rc.calls.Load() == 1 })
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop while a delivery waited to retry")
	}
	if c := rc.calls.Load(); c != 1 {
		t.Errorf("%d calls, want 1", c)
	}
}

func TestStoreNotifiesWebhooks(t *testing.T) {
	rc := newReceiver(t)
	n := fastNotifier(secrets(map[string]string{"env:KEY": "k"}))
	runNotifier(t, n)
	s := openStore(t, t.TempDir(), approval.WithNotify(n.Notify))

	hook := bundle.Webhook{URL: rc.URL, Secret: "env:KEY"}
	open := func(hash string, expiresIn time.Duration) approval.Request {
		in := request(time.Now())
		in.Hash, in.ExpiresAt, in.Webhooks = hash, time.Now().Add(expiresIn), []bundle.Webhook{hook}
		return mustOpen(t, s, in)
	}
	approved := open("h-approve", time.Hour)
	denied := open("h-deny", time.Hour)
	cancelled := open("h-cancel", time.Hour)
	expired := open("h-expire", 100*time.Millisecond)
	// A retry of a pending request asks nobody again.
	retry := request(time.Now())
	retry.Hash, retry.Webhooks = "h-approve", []bundle.Webhook{hook}
	if _, created, err := s.Open(ctx, retry); err != nil || created {
		t.Fatalf("retry: created %v, %v", created, err)
	}
	// Votes that settle nothing tell nobody.
	if _, err := s.Vote(ctx, approved.ID, mallory, true, ""); !errors.Is(err, approval.ErrNotApprover) {
		t.Fatal(err)
	}

	mustVote(t, s, approved.ID, bob, true, "")
	mustVote(t, s, denied.ID, bob, false, "no")
	if err := s.Cancel(ctx, cancelled.ID, "client went away"); err != nil {
		t.Fatal(err)
	}
	settled, _ := s.Settled(ctx, expired.ID)
	waitClosed(t, settled, 5*time.Second, "expiry")

	want := map[string]string{
		approval.EventRequested + " " + approved.ID:  string(approval.Pending),
		approval.EventRequested + " " + denied.ID:    string(approval.Pending),
		approval.EventRequested + " " + cancelled.ID: string(approval.Pending),
		approval.EventRequested + " " + expired.ID:   string(approval.Pending),
		approval.EventApproved + " " + approved.ID:   string(approval.Approved),
		approval.EventDenied + " " + denied.ID:       string(approval.Denied),
		approval.EventCancelled + " " + cancelled.ID: string(approval.Cancelled),
		approval.EventExpired + " " + expired.ID:     string(approval.Expired),
	}
	settledDeliveries(t, n, int64(len(want)))
	time.Sleep(50 * time.Millisecond) // room for a wrong extra event to arrive

	got := map[string]string{}
	for _, d := range rc.deliveries() {
		var body approval.Notification
		if err := json.Unmarshal(d.body, &body); err != nil {
			t.Fatalf("body: %v", err)
		}
		if h := d.header.Get("X-Gatehouse-Event"); h != body.Event {
			t.Errorf("header event %q, body event %q", h, body.Event)
		}
		if d.header.Get("X-Gatehouse-Signature") == "" {
			t.Error("a store event was not signed")
		}
		if !strings.Contains(body.Text, body.Approval.ID) {
			t.Errorf("text %q does not name %s", body.Text, body.Approval.ID)
		}
		k := body.Event + " " + body.Approval.ID
		if _, dup := got[k]; dup {
			t.Errorf("%s delivered twice", k)
		}
		got[k] = string(body.Approval.State)
	}
	for k, state := range want {
		if got[k] != state {
			t.Errorf("%s: state %q, want %q", k, got[k], state)
		}
	}
	if len(got) != len(want) {
		t.Errorf("events %v, want %v", got, want)
	}
	if f := n.Stats.Failed.Load(); f != 0 {
		t.Errorf("%d failed deliveries", f)
	}
}

func TestText(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	r := request(now)
	r.ID = "ap-abcdefghijklmnop"
	r.Needs = append(r.Needs, approval.Need{Rule: "pii", Reason: "customer data", Groups: []string{"security", "privacy"}, Count: 2})

	text := approval.Text(approval.EventRequested, r)
	for _, want := range []string{
		"*Approval needed* `ap-abcdefghijklmnop`",
		"alice (subject sub-alice) wants to run on orders",
		"```DELETE FROM orders WHERE id = $1```",
		"with parameters 42",
		"Rule `deletes`: deletes need a dba. Needs 1 approval(s) from dba.",
		"Rule `pii`: customer data. Needs 2 approval(s) from security or privacy.",
		"Expires 2030-01-02T04:04:05Z",
		"gatehouse approvals approve ap-abcdefghijklmnop",
		"gatehouse approvals deny ap-abcdefghijklmnop",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("requested text lacks %q:\n%s", want, text)
		}
	}

	r.State, r.Outcome = approval.Denied, "denied by bob: no"
	if got, want := approval.Text(approval.EventDenied, r), "*Approval denied* `ap-abcdefghijklmnop` (alice (subject sub-alice) on orders): denied by bob: no"; got != want {
		t.Errorf("denied text %q, want %q", got, want)
	}

	// A huge statement is clipped: a chat message has a size limit.
	r.Subject.Text = strings.Repeat("x", 5000)
	r.Subject.Params = nil
	text = approval.Text(approval.EventRequested, r)
	if strings.Contains(text, strings.Repeat("x", 1501)) || !strings.Contains(text, strings.Repeat("x", 1500)+"…") {
		t.Error("the SQL was not clipped to 1500 bytes")
	}
	if strings.Contains(text, "with parameters") {
		t.Error("parameters line without parameters")
	}
}

func TestNotificationDoesNotCarryOtherWebhooksURLs(t *testing.T) {
	rc := newReceiver(t)
	n := fastNotifier(secrets(nil))
	runNotifier(t, n)

	slack := bundle.Webhook{URL: rc.URL + "/services/T000/B000/SLACKSECRET"}
	other := bundle.Webhook{URL: rc.URL + "/other"}
	n.Notify(approval.EventRequested, hooked(request(time.Now()), slack, other))
	settledDeliveries(t, n, 2)
	for _, d := range rc.deliveries() {
		if d.path == "/other" && strings.Contains(string(d.body), "SLACKSECRET") {
			t.Errorf("the /other receiver got the Slack webhook's URL:\n%s", d.body)
		}
	}
}

// TestTextEscapesSlackMarkup: SQL written by the requester cannot ping a
// channel or plant a link in the approvers' Slack.
func TestTextEscapesSlackMarkup(t *testing.T) {
	r := request(time.Now())
	r.Subject.Text = "SELECT '<!channel> <https://evil.example|click> & more'"
	got := approval.Text(approval.EventRequested, r)
	if strings.Contains(got, "<!channel>") || strings.Contains(got, "<https://") || !strings.Contains(got, "&lt;!channel&gt;") || !strings.Contains(got, "&amp; more") {
		t.Errorf("text %q", got)
	}
}

// TestPrintableShowsWhatIsThere: a carriage return, a terminal escape or a
// bidi override in the requester's SQL cannot make it look like another.
func TestPrintableShowsWhatIsThere(t *testing.T) {
	in := "UPDATE t SET x = 0 /*\rSELECT 1 \x1b[8m hidden \u202Eevil\u200b */\n\tWHERE id = 1"
	got := approval.Printable(in)
	for _, bad := range []string{"\r", "\x1b", "\u202E", "\u200b"} {
		if strings.Contains(got, bad) {
			t.Errorf("%q kept %q", got, bad)
		}
	}
	for _, want := range []string{`\u{000D}`, `\u{001B}`, `\u{202E}`, `\u{200B}`, "\n\tWHERE id = 1"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
}
