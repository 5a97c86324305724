package ssh

import (
	"context"
	"errors"
	"io"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gatehouse-dev/gatehouse/celpolicy"
	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// exitRefused is the exit status of a command the gateway refused, as a
// shell's for a command it cannot run.
const exitRefused = 126

// sessionChannel relays one session channel: its requests are decided one
// by one, the program (exec, shell or subsystem) starts only when allowed,
// and its data flows between the caller's channel and the gateway's own
// channel upstream, recorded on the way.
type sessionChannel struct {
	c    *conn
	down gossh.Channel
	up   gossh.Channel

	// program is the kind of program started ("" before one is); ref its
	// recorded request.
	program string
	ref     int
	started time.Time
	out, in *core.Stream

	// exit is the program's exit status or signal, from upstream.
	exitMu  sync.Mutex
	exitReq *gossh.Request

	// running: this channel's program counts in c.running.
	running bool
	// terminal: the upstream granted this channel a pty. What a command
	// with a terminal reads is typed (a sudo password at a prompt whose
	// echo is off), so it is recorded only as a shell's input is.
	terminal bool

	closeOnce  sync.Once
	downClosed chan struct{}
	outputDone chan struct{}
	upClosed   chan struct{}
}

// session opens the gateway's own session channel upstream, then accepts
// the caller's, and relays it.
func (c *conn) session(ctx context.Context, nch gossh.NewChannel) {
	client, err := c.upstream(ctx)
	if err != nil {
		_ = nch.Reject(gossh.ConnectionFailed, "gatehouse: "+err.Error())
		return
	}
	up, upReqs, err := client.OpenChannel("session", nil)
	if err != nil {
		_ = nch.Reject(gossh.ConnectionFailed, "gatehouse: the upstream refused a session: "+err.Error())
		return
	}
	down, downReqs, err := nch.Accept()
	if err != nil {
		up.Close()
		return
	}
	sc := &sessionChannel{c: c, down: down, up: up, downClosed: make(chan struct{}), outputDone: make(chan struct{}), upClosed: make(chan struct{}),
		out: core.NewStream(c.cs, "o", c.srv.cfg.RecordLimit)}
	c.openMu.Lock()
	c.open[sc] = struct{}{}
	c.openMu.Unlock()
	defer func() {
		c.openMu.Lock()
		delete(c.open, sc)
		c.openMu.Unlock()
	}()
	sc.run(ctx, downReqs, upReqs)
}

func (sc *sessionChannel) run(ctx context.Context, downReqs, upReqs <-chan *gossh.Request) {
	go sc.upstreamRequests(upReqs)
	go sc.pumpOutput()
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		<-sc.outputDone
		<-sc.upClosed
		sc.finish()
	}()
	// Requests are read as they come and handled in order by one worker,
	// so a request held for approval neither blocks the connection nor
	// loses the ones after it.
	queue := make(chan *gossh.Request, 64)
	go func() {
		defer close(queue)
		defer close(sc.downClosed)
		for r := range downReqs {
			select {
			case queue <- r:
			default:
				// A caller that floods requests while one is held.
				if r.WantReply {
					_ = r.Reply(false, nil)
				}
			}
		}
	}()
	for r := range queue {
		sc.request(ctx, r)
	}
	// The caller closed the channel: so does the upstream's.
	sc.up.Close()
	<-finished
}

// request handles one request on the session channel.
func (sc *sessionChannel) request(ctx context.Context, r *gossh.Request) {
	switch r.Type {
	case "exec", "shell", "subsystem":
		if sc.program != "" {
			reply(r, false)
			return
		}
		sc.start(ctx, r)
	case "pty-req":
		var p struct {
			Term                         string
			Columns, Rows, Width, Height uint32
			Modes                        string
		}
		if gossh.Unmarshal(r.Payload, &p) != nil {
			reply(r, false)
			return
		}
		if _, ok := sc.grant(ctx, r, &celpolicy.SSHRequest{Kind: "pty", Term: p.Term, Cols: int(p.Columns), Rows: int(p.Rows)}, "pty "+p.Term); ok {
			sc.terminal = true
		}
	case "env":
		var p struct{ Name, Value string }
		if gossh.Unmarshal(r.Payload, &p) != nil {
			reply(r, false)
			return
		}
		sc.grant(ctx, r, &celpolicy.SSHRequest{Kind: "env", Env: p.Name}, "env "+p.Name)
	case "x11-req":
		req := &celpolicy.SSHRequest{Kind: "x11"}
		if approval, ok := sc.grant(ctx, r, req, "x11"); ok {
			sc.c.allowMu.Lock()
			sc.c.x11 = &grant{req: req, approval: approval}
			sc.c.allowMu.Unlock()
		}
	case "auth-agent-req@openssh.com":
		req := &celpolicy.SSHRequest{Kind: "agent"}
		if approval, ok := sc.grant(ctx, r, req, "agent forwarding"); ok {
			sc.c.allowMu.Lock()
			sc.c.agent = &grant{req: req, approval: approval}
			sc.c.allowMu.Unlock()
		}
	case "window-change", "signal", "break":
		// Part of a session the policy allowed: passed on, once they are
		// known to be well formed (a malformed one would make the upstream
		// drop the channel).
		if !wellFormed(r) {
			reply(r, false)
			return
		}
		sc.forwardRequest(r)
	default:
		reply(r, false)
	}
}

// grant decides a request that sets up the session (a terminal, an
// environment variable, forwarding), and passes it upstream when allowed.
// A refusal is told on stderr and the request fails; the session goes on.
// ok says the upstream took the request; approval names the approval that
// released it, when it was reviewed.
func (sc *sessionChannel) grant(ctx context.Context, r *gossh.Request, req *celpolicy.SSHRequest, text string) (approval string, ok bool) {
	if !sc.c.check(ctx, sc.down.Stderr()) {
		reply(r, false)
		return "", false
	}
	dec := sc.c.decide(ctx, req.Kind, text, req, nil)
	if dec.gone {
		reply(r, false)
		return "", false
	}
	if dec.refusal != nil {
		_, _ = io.WriteString(sc.down.Stderr(), crlf(refusalText(dec.refusal))+"\r\n")
		reply(r, false)
		return "", false
	}
	return dec.approval, sc.forwardRequest(r)
}

// forwardRequest passes a request upstream and its answer back.
func (sc *sessionChannel) forwardRequest(r *gossh.Request) bool {
	ok, err := sc.up.SendRequest(r.Type, r.WantReply, r.Payload)
	if err != nil {
		ok = false
	}
	reply(r, ok)
	return ok
}

// start decides the program and, when allowed, starts it upstream and
// lets the caller's input through. The request itself succeeds at once:
// the caller's side of the channel is ready, and what it runs is the
// program (once allowed, and approved when under review) or the gateway's
// refusal on stderr with exit status 126. Clients wait for that answer
// before they read anything, so holding it would hide the hold's notice.
func (sc *sessionChannel) start(ctx context.Context, r *gossh.Request) {
	req, text, ok := programRequest(r)
	if !ok {
		reply(r, false)
		return
	}
	reply(r, true)
	if !sc.c.check(ctx, sc.down.Stderr()) {
		return
	}
	var hold *holdSpec
	if req.Kind == "exec" {
		// Only a command can wait for approvers: it has not started, and
		// the caller sees why on stderr. A shell or a file transfer under
		// review is refused with the approval's id.
		hold = sc.c.stderrHold(sc.down.Stderr(), sc.downClosed)
	}
	sc.program = req.Kind
	dec := sc.c.decide(ctx, req.Kind, text, req, hold)
	switch {
	case dec.gone:
		sc.close()
		return
	case dec.refusal != nil:
		sc.refuse(dec.refusal, dec.ref)
		return
	}
	sc.ref, sc.started = dec.ref, time.Now()
	limit := sc.c.srv.cfg.RecordLimit
	if req.Kind == "subsystem" || fileTransfer(req) {
		limit = 0 // a file transfer's bytes are counted, not kept
	}
	sc.out.Attach(sc.ref)
	if req.Kind == "exec" && !sc.terminal || sc.c.srv.cfg.RecordShellInput {
		// A command's piped input is recorded; typed input (a shell, or a
		// command with a terminal, where passwords are typed at prompts)
		// only when record_shell_input says so.
		sc.in = core.NewStream(sc.c.cs, "i", limit)
	} else {
		sc.in = core.NewStream(sc.c.cs, "i", 0)
	}
	sc.in.Attach(sc.ref)
	sc.out.SetLimit(limit)
	if ok, err := sc.up.SendRequest(r.Type, true, r.Payload); err != nil || !ok {
		msg := "gatehouse: the upstream refused to start the " + req.Kind
		_, _ = io.WriteString(sc.down.Stderr(), msg+"\r\n")
		sc.sendExit(exitRefused + 1)
		code := exitRefused + 1
		sc.c.cs.NoteOutcome(sc.ref, core.Outcome{Duration: time.Since(sc.started), ExitCode: &code, Error: msg})
		sc.ref = 0
		sc.close()
		return
	}
	if req.Kind != "shell" {
		// A command or a file transfer is busy while it runs; a shell is
		// idle when its user types nothing (activity, below).
		sc.c.running.Add(1)
		sc.running = true
	}
	go func() {
		_, _ = io.Copy(sc.up, io.TeeReader(sc.down, activity{sc.in, sc.c.cs}))
		_ = sc.up.CloseWrite()
	}()
}

// activity counts what the caller sends as activity against the idle
// timeout, on its way to a stream.
type activity struct {
	w  io.Writer
	cs *core.Session
}

func (a activity) Write(p []byte) (int, error) {
	a.cs.Touch()
	return a.w.Write(p)
}

// programRequest reads an exec, shell or subsystem request.
func programRequest(r *gossh.Request) (*celpolicy.SSHRequest, string, bool) {
	switch r.Type {
	case "exec":
		var p struct{ Command string }
		if gossh.Unmarshal(r.Payload, &p) != nil {
			return nil, "", false
		}
		return celpolicy.Exec(p.Command), p.Command, true
	case "subsystem":
		var p struct{ Name string }
		if gossh.Unmarshal(r.Payload, &p) != nil {
			return nil, "", false
		}
		return &celpolicy.SSHRequest{Kind: "subsystem", Subsystem: p.Name}, "subsystem " + p.Name, true
	}
	return &celpolicy.SSHRequest{Kind: "shell"}, "shell", true
}

// fileTransfer reports whether an exec is the host's end of a file
// transfer: scp's classic protocol (scp -O, and OpenSSH clients before
// 9.0) runs `scp -t DIR` or `scp -f FILE`, rsync runs `rsync --server`,
// and `sftp -s /usr/lib/openssh/sftp-server` runs the SFTP server as a
// command; the file's bytes are the command's input or output. Like sftp's, they
// are counted, not kept: a recording is an audit trail, not a file store,
// and the files copied are often keys. Only a simple command counts, so
// that no other program's output hides behind the name; and only the
// program as the host finds it by name, or in a system directory
// (systemProgram), since whoever runs commands can put any program at
// /tmp/x/scp or ./scp.
func fileTransfer(req *celpolicy.SSHRequest) bool {
	if req.Kind != "exec" || !req.Simple || len(req.Argv) == 0 || !systemProgram(req.Argv[0]) {
		return false
	}
	switch path.Base(req.Argv[0]) {
	case "scp":
		return scpHostEnd(req.Argv[1:])
	case "rsync":
		return slices.Contains(req.Argv[1:], "--server")
	case "sftp-server":
		return true
	}
	return false
}

// scpHostEnd reports whether scp's arguments are those of the host's end
// of a transfer, as an OpenSSH client sends them: options from -v, -r,
// -p, -d, -t and -f only (alone or together), one of them -t or -f, then
// the paths. Any other option is refused as a transfer: -S runs a program
// of the caller's choice as ssh, and an option that merely holds a t or
// an f (-oStrictHostKeyChecking=no) is not -t. scp stops reading options
// at its first operand.
func scpHostEnd(args []string) bool {
	mode := false
	for _, a := range args {
		if a == "--" || !strings.HasPrefix(a, "-") || a == "-" {
			break
		}
		if strings.Trim(a[1:], "vrpdtf") != "" {
			return false
		}
		if strings.ContainsAny(a, "tf") {
			mode = true
		}
	}
	return mode
}

// systemDirs are where a distribution installs scp, rsync and
// sftp-server: directories only root writes.
var systemDirs = []string{"/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin",
	"/usr/lib/openssh", "/usr/libexec/openssh", "/usr/lib/ssh", "/usr/libexec"}

// systemProgram reports whether a command's program is named bare (the
// host looks it up in PATH) or by its path in a system directory.
func systemProgram(argv0 string) bool {
	if !strings.Contains(argv0, "/") {
		return true
	}
	return strings.HasPrefix(argv0, "/") && slices.Contains(systemDirs, path.Dir(argv0))
}

// refuse gives the caller the refusal on stderr and exit status 126, and
// closes the channel; the connection stays usable for what is allowed.
func (sc *sessionChannel) refuse(ref *core.Refusal, recorded int) {
	_, _ = io.WriteString(sc.down.Stderr(), crlf(refusalText(ref))+"\r\n")
	sc.sendExit(exitRefused)
	code := exitRefused
	if recorded != 0 {
		sc.c.cs.NoteOutcome(recorded, core.Outcome{ExitCode: &code, Error: ref.Message})
	}
	sc.close()
}

// pumpOutput copies the program's output to the caller, recorded.
func (sc *sessionChannel) pumpOutput() {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(sc.down, io.TeeReader(sc.up, sc.out))
	}()
	go func() {
		defer wg.Done()
		_, _ = io.Copy(sc.down.Stderr(), io.TeeReader(sc.up.Stderr(), sc.out))
	}()
	wg.Wait()
	_ = sc.down.CloseWrite()
	close(sc.outputDone)
}

// upstreamRequests keeps the program's exit status, to pass it on once
// its output has been.
func (sc *sessionChannel) upstreamRequests(reqs <-chan *gossh.Request) {
	for r := range reqs {
		switch r.Type {
		case "exit-status", "exit-signal":
			sc.exitMu.Lock()
			sc.exitReq = r
			sc.exitMu.Unlock()
		}
		reply(r, false)
	}
	close(sc.upClosed)
}

// finish runs once the upstream channel is done: the exit status goes to
// the caller, the outcome and the rest of the output to the recording.
func (sc *sessionChannel) finish() {
	if sc.running {
		sc.c.running.Add(-1)
	}
	sc.exitMu.Lock()
	exit := sc.exitReq
	sc.exitMu.Unlock()
	var code *int
	if exit != nil {
		_, _ = sc.down.SendRequest(exit.Type, false, exit.Payload)
		if exit.Type == "exit-status" {
			var p struct{ Status uint32 }
			if gossh.Unmarshal(exit.Payload, &p) == nil {
				n := int(p.Status)
				code = &n
			}
		}
	}
	if sc.ref != 0 {
		o := core.Outcome{Duration: time.Since(sc.started), ExitCode: code}
		o.Bytes = sc.out.Close()
		if sc.in != nil {
			o.Bytes += sc.in.Close()
		}
		if exit != nil && exit.Type == "exit-signal" {
			var p struct{ Signal string }
			_ = gossh.Unmarshal(exit.Payload, &p)
			o.Error = "killed by signal " + p.Signal
		}
		sc.c.cs.NoteOutcome(sc.ref, o)
	}
	sc.close()
}

func (sc *sessionChannel) sendExit(code int) {
	_, _ = sc.down.SendRequest("exit-status", false, gossh.Marshal(struct{ Status uint32 }{uint32(code)}))
}

func (sc *sessionChannel) close() {
	sc.closeOnce.Do(func() {
		_ = sc.down.Close()
		_ = sc.up.Close()
	})
}

// wellFormed reports whether a window-change or signal request's payload
// is what the protocol says.
func wellFormed(r *gossh.Request) bool {
	switch r.Type {
	case "window-change":
		var p struct{ Columns, Rows, Width, Height uint32 }
		return gossh.Unmarshal(r.Payload, &p) == nil
	case "signal":
		var p struct{ Signal string }
		return gossh.Unmarshal(r.Payload, &p) == nil
	case "break":
		var p struct{ Length uint32 }
		return gossh.Unmarshal(r.Payload, &p) == nil
	}
	return false
}

func reply(r *gossh.Request, ok bool) {
	if r.WantReply {
		if err := r.Reply(ok, nil); err != nil && !errors.Is(err, io.EOF) {
			return
		}
	}
}

// crlf makes line ends terminal line ends: a caller with a terminal is in
// raw mode.
func crlf(s string) string {
	out := make([]byte, 0, len(s)+8)
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' && (i == 0 || s[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, s[i])
	}
	return string(out)
}
