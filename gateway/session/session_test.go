package session_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
	"github.com/gatehouse-dev/gatehouse/gateway/approval"
	"github.com/gatehouse-dev/gatehouse/gateway/auth"
	"github.com/gatehouse-dev/gatehouse/gateway/bundlestore"
	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/session"
	"github.com/gatehouse-dev/gatehouse/hclconfig"
	"github.com/gatehouse-dev/gatehouse/internal/clock"
	"github.com/gatehouse-dev/gatehouse/internal/oidctest"
)

// The core is tested here on an ssh_host resource, with no wire protocol
// at all: what it does must not depend on PostgreSQL.

const policy = `
identity_provider "corp" {
  issuer    = %q
  audiences = ["gatehouse"]
}

identity "ops" {
  provider = "corp"
  subject  = "ops"
  groups   = ["ops"]
}

identity "intern" {
  provider = "corp"
  subject  = "intern"
}

ssh_host "bastion" {
  address  = "127.0.0.1:22"
  user     = "deploy"
  password = "env:BASTION_PASSWORD"
  host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPBeDSdnd5RM0ik4mm+IiV3JVbH5DLhkQfbXxC/bG9SL"
}

policy "ops" {
  resources  = ["bastion"]
  identities = [%s]

  rule "connect" {
    effect = "allow"
    on     = ["connect"]
    reason = "ops may connect"
  }

  rule "uptime" {
    effect = "allow"
    when   = "request.command == 'uptime'"
    reason = "uptime is harmless"
  }

  rule "reboot" {
    effect = "review"
    when   = "request.command == 'reboot'"
    reason = "reboots need a second pair of eyes"
    approval {
      groups  = ["sre"]
      timeout = "10m"
      wait    = "2m"
    }
  }
}
`

type rig struct {
	t      *testing.T
	issuer *oidctest.Issuer
	clock  *clock.Fake
	key    ed25519.PrivateKey
	store  *bundlestore.Store
	rec    *recorder.Recorder
	recDir string
	core   *session.Core
	apv    *approval.FileStore
	rev    uint64
}

func newRig(t *testing.T, withApprovals bool) *rig {
	t.Helper()
	r := &rig{t: t, issuer: oidctest.Start(t), clock: clock.NewFake(time.Now())}
	var err error
	if r.key, err = bundle.GenerateKey(); err != nil {
		t.Fatal(err)
	}
	r.store = bundlestore.New(bundle.NewKeyring(r.key.Public().(ed25519.PublicKey)), "", bundlestore.WithAuthOptions(auth.WithClock(r.clock.Now)))
	r.publish(`"ops"`)
	recKey, _ := bundle.GenerateKey()
	r.recDir = t.TempDir()
	if r.rec, err = recorder.Open(r.recDir, recKey); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.rec.Close() })
	opts := []session.Option{session.WithRecorder(r.rec), session.WithClock(r.clock), session.WithLogger(slog.New(slog.DiscardHandler))}
	if withApprovals {
		if r.apv, err = approval.Open(t.TempDir(), approval.WithClock(r.clock)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.apv.Close() })
		opts = append(opts, session.WithApprovals(r.apv))
	}
	r.core = session.New(r.store, opts...)
	return r
}

// publish activates the policy at the next revision, covering identities.
func (r *rig) publish(identities string) {
	r.t.Helper()
	res, diags := hclconfig.LoadFiles(map[string][]byte{"p.hcl": []byte(fmt.Sprintf(policy, r.issuer.URL, identities))})
	if diags.HasErrors() {
		r.t.Fatal(diags)
	}
	r.rev++
	p, err := bundle.NewPayload(*res.Model, bundle.BuildOptions{Revision: r.rev, CreatedAt: time.Unix(1764000000, 0), Compiler: "test"})
	if err != nil {
		r.t.Fatal(err)
	}
	raw, _ := bundle.EncodePayload(p)
	data, _ := bundle.Sign(raw, r.key)
	if _, err := r.store.Apply(data, "test"); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) admit(subject string, exp time.Duration) (*session.Session, *session.Refusal) {
	c := r.issuer.Claims(subject, "gatehouse")
	c["exp"] = r.clock.Now().Add(exp).Unix()
	return r.core.Admit(context.Background(), session.Admission{Protocol: "ssh", Kind: bundle.KindSSHHost, Resource: "bastion",
		Token: r.issuer.Sign(r.t, c), ClientAddr: "127.0.0.1:1", Noun: "command"})
}

func (r *rig) mustAdmit(subject string) *session.Session {
	r.t.Helper()
	s, ref := r.admit(subject, time.Hour)
	if ref != nil {
		r.t.Fatalf("admit %s: %v", subject, ref)
	}
	r.t.Cleanup(func() { s.End("test done") })
	return s
}

func (r *rig) events(s *session.Session) []recorder.Event {
	r.t.Helper()
	evs, err := recorder.ReadEvents(r.recDir + "/" + s.ID() + ".jsonl")
	if err != nil {
		r.t.Fatal(err)
	}
	return evs
}

func exec(cmd string) *celpolicy.SSHRequest { return &celpolicy.SSHRequest{Kind: "exec", Command: cmd} }

func TestAdmit(t *testing.T) {
	r := newRig(t, false)
	st := r.core.Stats("ssh")
	if _, ref := r.core.Lookup(bundle.KindSSHHost, "nope"); ref == nil || ref.Code != session.UnknownResource {
		t.Errorf("an unknown resource: %v", ref)
	}
	if _, ref := r.core.Lookup(bundle.KindPostgres, "bastion"); ref == nil || ref.Code != session.UnknownResource {
		t.Errorf("a resource of another kind: %v", ref)
	}
	_, ref := r.core.Admit(context.Background(), session.Admission{Protocol: "ssh", Kind: bundle.KindSSHHost, Resource: "bastion", Token: "not-a-token"})
	if ref == nil || ref.Code != session.TokenRejected || st.AuthFailures.Load() != 1 {
		t.Errorf("a bad token: %v (auth failures %d)", ref, st.AuthFailures.Load())
	}
	if _, ref := r.admit("intern", time.Hour); ref == nil || ref.Code != session.Denied || !strings.Contains(ref.Message, "deny by default") || st.ConnectDenied.Load() != 1 {
		t.Errorf("a caller the policy does not let connect: %v", ref)
	}
	s := r.mustAdmit("ops")
	if st.Sessions.Load() != 1 || st.Active.Load() != 1 || s.Identity().Name != "ops" || s.Protocol() != "ssh" {
		t.Errorf("admitted: sessions %d active %d identity %+v", st.Sessions.Load(), st.Active.Load(), s.Identity())
	}
	evs := r.events(s)
	if evs[0].Type != recorder.TypeStart || evs[0].Protocol != "ssh" || evs[0].Identity != "ops" || evs[0].Resource != "bastion" {
		t.Errorf("the recording starts with %+v", evs[0])
	}
	s.End("done")
	s.End("twice") // ends once
	if st.Active.Load() != 0 {
		t.Errorf("active after End: %d", st.Active.Load())
	}
}

func TestDecideCountsAndRecords(t *testing.T) {
	r := newRig(t, false)
	s := r.mustAdmit("ops")
	if d := s.Decide(exec("uptime"), true); d.Effect != bundle.EffectAllow {
		t.Fatalf("uptime: %+v", d)
	}
	d := s.Decide(exec("rm -rf /"), true)
	if d.Effect != bundle.EffectDeny {
		t.Fatalf("rm: %+v", d)
	}
	ref := s.Denial(d, exec("rm -rf /"))
	if ref.Code != session.Denied || !strings.Contains(ref.Message, "deny by default") || !strings.Contains(ref.Detail, "ops") {
		t.Errorf("denial %+v", ref)
	}
	// A preparation counts only when refused.
	s.Decide(exec("uptime"), false)
	if c := s.Counters(); c.Requests != 2 || c.Denied != 1 {
		t.Errorf("counters %+v", c)
	}
	st := r.core.Stats("ssh")
	if st.Allowed.Load() != 1 || st.Denied.Load() != 1 {
		t.Errorf("stats allowed %d denied %d", st.Allowed.Load(), st.Denied.Load())
	}
	n, err := s.RecordRequest(session.Requested{Kind: "exec", Text: "uptime", Request: exec("uptime"), Decision: d})
	if err != nil {
		t.Fatal(err)
	}
	code := 0
	s.NoteOutcome(n, session.Outcome{ExitCode: &code, Duration: time.Millisecond})
	s.End("done")
	evs := r.events(s)
	last := evs[len(evs)-4]
	if last.Type != recorder.TypeRequest || last.Text != "uptime" || !strings.Contains(string(last.Request), `"command":"uptime"`) {
		t.Errorf("request event %+v", last)
	}
	if res := evs[len(evs)-3]; res.Type != recorder.TypeResult || res.Ref != n || res.ExitCode == nil {
		t.Errorf("result event %+v", res)
	}
}

func TestCheck(t *testing.T) {
	r := newRig(t, false)
	s, ref := r.admit("ops", time.Minute)
	if ref != nil {
		t.Fatal(ref)
	}
	defer s.End("done")
	if ref := s.Check(context.Background()); ref != nil {
		t.Fatalf("a fresh session: %v", ref)
	}
	// A new revision that still lets ops in: judged again and recorded.
	r.publish(`"ops", "intern"`)
	if ref := s.Check(context.Background()); ref != nil {
		t.Fatalf("after a harmless revision: %v", ref)
	}
	evs := r.events(s)
	if last := evs[len(evs)-1]; last.Type != recorder.TypeRecheck || last.BundleRevision != 2 || last.Identity != "ops" {
		t.Errorf("recheck event %+v", last)
	}
	// Past the expiry plus the 30 s skew, on the core's clock.
	r.clock.Advance(time.Minute + 31*time.Second)
	if ref := s.Check(context.Background()); ref == nil || ref.Code != session.TokenExpired {
		t.Errorf("after expiry: %v", ref)
	}

	// A revision that revokes the connection.
	s2 := r.mustAdmit("ops")
	r.publish(`"intern"`)
	if ref := s2.Check(context.Background()); ref == nil || ref.Code != session.Revoked || !strings.Contains(ref.Message, "revokes the connection") {
		t.Errorf("after a revoking revision: %v", ref)
	}
}

// TestHold: a review holds the request until approvers act; it runs once
// approved, is refused when denied, withdrawn by a cancel, and denied
// outright without an approval store.
func TestHold(t *testing.T) {
	r := newRig(t, true)
	sre := approval.Principal{Issuer: "x", Subject: "sre-1", Groups: []string{"sre"}}
	hold := func(s *session.Session, hash string, notified chan<- approval.Request) session.Verdict {
		req := exec("reboot")
		d := s.Decide(req, true)
		if d.Effect != bundle.EffectReview {
			t.Fatalf("reboot: %+v", d)
		}
		return s.Hold(context.Background(), session.Held{
			Kind: "exec", Text: "reboot", Request: req, Decision: d,
			Subject: approval.Subject{Text: "reboot"},
			Bind:    func() (string, error) { return hash, nil },
			Notify: func(a approval.Request, wait time.Duration) error {
				notified <- a
				return nil
			},
		})
	}
	t.Run("approved", func(t *testing.T) {
		s := r.mustAdmit("ops")
		notified := make(chan approval.Request, 1)
		var v session.Verdict
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); v = hold(s, "sha256:approved", notified) }()
		a := <-notified
		if id, ok := s.Held(); !ok || id != a.ID || a.Protocol != "ssh" || a.Kind != "exec" || a.Subject.Text != "reboot" || a.Wait != 2*time.Minute {
			t.Errorf("held %q (%v) for %+v", id, ok, a)
		}
		if _, err := r.apv.Vote(context.Background(), a.ID, sre, true, "ok"); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if v.Refusal != nil || v.Gone || v.End != nil || v.Decision.Effect != bundle.EffectAllow || v.Approval != a.ID {
			t.Fatalf("verdict %+v", v)
		}
		if got, _ := r.apv.Get(context.Background(), a.ID); got.Uses != 1 {
			t.Errorf("uses %d", got.Uses)
		}
		evs := r.events(s)
		if last := evs[len(evs)-1]; last.Type != recorder.TypeApproval || last.State != "approved" || last.Approval != a.ID {
			t.Errorf("last event %+v", last)
		}
	})
	t.Run("the wait runs out on the clock", func(t *testing.T) {
		s := r.mustAdmit("ops")
		// Every session's own timers (expiry, idle) are armed already:
		// wait for the two the hold adds, the request's expiry and the
		// hold's wait, before the clock moves, or the wait would be armed
		// after the move and never run out.
		base := r.clock.Timers()
		notified := make(chan approval.Request, 1)
		done := make(chan session.Verdict, 1)
		go func() { done <- hold(s, "sha256:waited", notified) }()
		<-notified
		for r.clock.Timers() < base+2 {
			time.Sleep(time.Millisecond)
		}
		r.clock.Advance(2 * time.Minute)
		v := <-done
		if v.Refusal == nil || v.Refusal.Code != session.ApprovalDenied || !strings.Contains(v.Refusal.Message, "not given within the 2m0s wait") {
			t.Errorf("verdict %+v", v.Refusal)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		s := r.mustAdmit("ops")
		notified := make(chan approval.Request, 1)
		done := make(chan session.Verdict, 1)
		go func() { done <- hold(s, "sha256:cancelled", notified) }()
		a := <-notified
		for !s.CancelHold() {
			time.Sleep(time.Millisecond)
		}
		v := <-done
		if v.Refusal == nil || v.Refusal.Code != session.Cancelled || !strings.Contains(v.Refusal.Message, "canceling command") {
			t.Errorf("verdict %+v", v.Refusal)
		}
		if got, _ := r.apv.Get(context.Background(), a.ID); got.State != approval.Cancelled {
			t.Errorf("request %s", got.State)
		}
	})
	t.Run("no approval store", func(t *testing.T) {
		r2 := newRig(t, false)
		s := r2.mustAdmit("ops")
		v := hold(s, "sha256:none", make(chan approval.Request, 1))
		if v.Refusal == nil || v.Refusal.Code != session.Denied || !strings.Contains(v.Refusal.Message, "keeps no approvals") {
			t.Errorf("verdict %+v", v.Refusal)
		}
	})
}
