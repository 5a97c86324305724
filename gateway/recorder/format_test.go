package recorder

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// TestFormat1RecordingsVerify: recordings written by the release before
// the protocol seam (testdata/format1, made by that gateway against real
// PostgreSQL) still verify, and read as requests with their SQL as the
// text and their masked columns as fields.
func TestFormat1RecordingsVerify(t *testing.T) {
	kr, err := bundle.LoadKeyring("testdata/format1/recorder.pub")
	if err != nil {
		t.Fatal(err)
	}
	paths, _ := filepath.Glob("testdata/format1/*.jsonl")
	if len(paths) != 3 {
		t.Fatalf("%d fixtures, want 3", len(paths))
	}
	var texts, fields []string
	for _, p := range paths {
		rep, err := Verify(p, kr)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK() || rep.Verified != rep.Events {
			t.Errorf("%s: %+v", p, rep)
		}
		evs, err := ReadEvents(p)
		if err != nil {
			t.Fatal(err)
		}
		if evs[0].Type != TypeStart || evs[0].Format != 0 || evs[0].Identity == "" {
			t.Errorf("%s: start %+v", p, evs[0])
		}
		for _, ev := range evs {
			if IsRequest(ev.Type) {
				texts = append(texts, ev.Display())
			}
			if ev.Type == TypeMasked {
				fields = append(fields, ev.MaskedFields()...)
			}
		}
	}
	joined := strings.Join(texts, "\n")
	for _, want := range []string{"DROP TABLE customers", "INSERT INTO payments (order_id, amount) VALUES ($1, $2)", "SELECT name, email, card_number FROM customers ORDER BY id"} {
		if !strings.Contains(joined, want) {
			t.Errorf("request texts %q lack %q", texts, want)
		}
	}
	if strings.Join(fields, ",") != "public.customers.email=partial,public.customers.card_number=redact" {
		t.Errorf("masked fields %q", fields)
	}
}

// TestFormat2Events: a recording written now carries its format, protocol
// and neutral request fields, and an output event's frames are asciicast
// arrays.
func TestFormat2Events(t *testing.T) {
	r, kr := newRec(t)
	s, err := r.Start("fmt2", Event{Protocol: "ssh", Identity: "ops", Resource: "bastion"})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := s.Record(Event{Type: TypeRequest, Kind: "exec", Text: "uptime", Request: json.RawMessage(`{"kind":"exec","command":"uptime"}`), Effect: "allow"})
	if err != nil {
		t.Fatal(err)
	}
	code := 0
	if _, err := s.Append(Event{Type: TypeOutput, Ref: ref, Frames: []Frame{{T: 0.25, Stream: "o", Data: "up 3 days\r\n"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(Event{Type: TypeResult, Ref: ref, ExitCode: &code}); err != nil {
		t.Fatal(err)
	}
	if err := s.End("done"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(r.dir, "fmt2.jsonl")
	if rep, err := Verify(path, kr); err != nil || !rep.OK() {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	evs, _ := ReadEvents(path)
	if evs[0].Format != FormatVersion || evs[0].Protocol != "ssh" {
		t.Errorf("start %+v", evs[0])
	}
	if f := evs[2].Frames; len(f) != 1 || f[0].Data != "up 3 days\r\n" || f[0].T != 0.25 {
		t.Errorf("frames %+v", f)
	}
	if evs[3].ExitCode == nil || *evs[3].ExitCode != 0 {
		t.Errorf("exit code of the result: %+v", evs[3])
	}
	b, _ := json.Marshal(evs[2].Frames[0])
	if string(b) != `[0.25,"o","up 3 days\r\n"]` {
		t.Errorf("frame JSON %s", b)
	}
}
