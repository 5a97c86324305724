package kubernetes

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/internal/kubetest"
)

const execPolicy = `
policy "all" {
  resources  = ["prod"]
  identities = ["dev"]
  rule "exec" {
    effect = "allow"
    when   = "request.resource == 'pods' && request.subresource == 'exec'"
    reason = "exec"
  }
}
`

// TestTypedExecInputNotRecorded: an exec with a terminal (kubectl exec
// -it) reads what its user types, and a password prompt turns the echo
// off: what is typed must not land in the recording. Without a terminal
// the input is piped, and recorded.
func TestTypedExecInputNotRecorded(t *testing.T) {
	c, _ := kubetest.StartWithPod(t, "demo", "web-0")
	g := startClusterGateway(t, c, execPolicy)
	execute := func(tty bool, typed string) {
		t.Helper()
		q := url.Values{"command": {"sh", "-c", "read p; echo got-${#p}"}, "container": {"app"}, "stdin": {"true"}, "stdout": {"true"}}
		if tty {
			q.Set("tty", "true")
		} else {
			q.Set("stderr", "true")
		}
		got := wsExec(t, g, "/api/v1/namespaces/demo/pods/web-0/exec?"+q.Encode(), typed+"\n")
		if strings.HasPrefix(got, "HTTP ") {
			t.Fatalf("exec: %s", got)
		}
		if !strings.Contains(got, "got-") {
			t.Fatalf("exec (tty %v): %q", tty, got)
		}
	}
	execute(true, "hunter2-typed-at-a-prompt")
	execute(false, "piped-input-is-recorded")
	// The recording is written as the streams end: wait for the piped
	// input, the last to be written.
	var inputs strings.Builder
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		inputs.Reset()
		ss, err := recorder.List(g.dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range ss {
			evs, err := recorder.ReadEvents(s.Path)
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range evs {
				for _, f := range ev.Frames {
					if f.Stream == "i" {
						inputs.WriteString(f.Data)
					}
				}
			}
		}
		if strings.Contains(inputs.String(), "piped-input-is-recorded") {
			break
		}
	}
	if strings.Contains(inputs.String(), "hunter2") || !strings.Contains(inputs.String(), "piped-input-is-recorded") {
		t.Errorf("recorded input: %q", inputs.String())
	}
}

// wsExec runs an exec through the gateway over a WebSocket of the
// v4.channel.k8s.io protocol, as kubectl does: stdin is sent on channel
// 0, and what comes back on channels 1 and 2 is returned once the stream
// ends (or after 10 seconds).
func wsExec(t *testing.T, g *clusterGateway, path, stdin string) string {
	t.Helper()
	return wsExecToken(t, g, g.iss.Token(t, "dev", "gatehouse"), path, stdin)
}

// wsExecToken is wsExec with the caller's token.
func wsExecToken(t *testing.T, g *clusterGateway, token, path, stdin string) string {
	t.Helper()
	nc, err := net.Dial("tcp", strings.TrimPrefix(g.gw.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	fmt.Fprintf(nc, "GET /k8s/prod%s HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n",
		path, token, key)
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("HTTP %d %s", resp.StatusCode, b)
	}
	if _, err := nc.Write(cliBin(true, opBinary, chanMsg(0, stdin)).bytes()); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for {
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return out.String()
		}
		n := int(h[1] & 0x7f)
		switch n {
		case 126:
			var l [2]byte
			_, _ = io.ReadFull(br, l[:])
			n = int(l[0])<<8 | int(l[1])
		case 127:
			t.Fatal("an unexpectedly long frame")
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(br, p); err != nil {
			return out.String()
		}
		if h[0]&0x0f == opClose {
			return out.String()
		}
		if len(p) > 0 && (p[0] == 1 || p[0] == 2) {
			out.Write(p[1:])
		}
		if strings.Contains(out.String(), "got-") {
			return out.String()
		}
	}
}
