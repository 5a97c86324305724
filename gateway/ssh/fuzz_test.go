package ssh

import (
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

// FuzzRequestPayloads: whatever payload a caller sends with a request is
// read without a panic, and a request the gateway reads as a program has
// the kind its type says, and the command exactly as sent.
func FuzzRequestPayloads(f *testing.F) {
	f.Add("exec", gossh.Marshal(struct{ Command string }{"uptime"}))
	f.Add("exec", gossh.Marshal(struct{ Command string }{"ls; rm -rf /"}))
	f.Add("subsystem", gossh.Marshal(struct{ Name string }{"sftp"}))
	f.Add("window-change", gossh.Marshal(struct{ Columns, Rows, Width, Height uint32 }{80, 24, 0, 0}))
	f.Add("signal", []byte{0, 0, 0, 3, 'I', 'N', 'T'})
	f.Add("shell", []byte{})
	f.Add("exec", []byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, typ string, payload []byte) {
		r := &gossh.Request{Type: typ, Payload: payload}
		_ = wellFormed(r)
		req, text, ok := programRequest(r)
		if !ok {
			return
		}
		switch typ {
		case "exec":
			var p struct{ Command string }
			if gossh.Unmarshal(payload, &p) != nil || req.Kind != "exec" || req.Command != p.Command || text != p.Command {
				t.Fatalf("exec %q read as %+v (%q)", p.Command, req, text)
			}
			if req.Simple && len(req.Argv) == 0 {
				t.Fatalf("%q: simple with no argv", p.Command)
			}
		case "subsystem":
			if req.Kind != "subsystem" {
				t.Fatalf("subsystem read as %+v", req)
			}
		default:
			if req.Kind != "shell" {
				t.Fatalf("%s read as %+v", typ, req)
			}
		}
		_ = requestHash(req)
	})
}
