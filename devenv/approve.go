package devenv

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"
)

// ApprovalDemo is a statement held for approval and approved from the CLI.
type ApprovalDemo struct {
	Title    string
	Identity string
	Resource string
	SQL      string
	// Group is the approver group whose dev approver approves it.
	Group   string
	Comment string
	// Want is in psql's output once the statement ran.
	Want string
}

// QuickstartApproval follows QuickstartScript: billing writes a payment,
// which the guardrails send to a DBA.
var QuickstartApproval = ApprovalDemo{
	Title:    "billing-service records a payment: held in its session until a DBA approves",
	Identity: "billing-service",
	Resource: "orders",
	SQL:      "INSERT INTO payments (order_id, amount) VALUES (2, 45.00);",
	Group:    "dba",
	Comment:  "demo: payment for order 2 checked",
	Want:     "INSERT 0 1",
}

var approvalIDRE = regexp.MustCompile(`ap-[a-z2-7]{16}`)

// RunApprovalDemo runs the statement with psql through the gateway, waits
// for the NOTICE that says it is held, and runs `gatehouse approvals list`
// and `approve` (the binary at gatehouse) as the group's dev approver; psql
// then gets its result. It prints every command and its output to w and
// returns what went other than planned.
func (e *Env) RunApprovalDemo(ctx context.Context, d ApprovalDemo, gatehouse string, w io.Writer, color bool) (id string, err error) {
	paint := func(code, s string) string { return Paint(color, code, s) }
	psql, err := exec.LookPath("psql")
	if err != nil {
		return "", fmt.Errorf("dev: psql is needed for the scripted session: %w (apt package postgresql-client-15)", err)
	}
	tok, err := e.Token(d.Identity)
	if err != nil {
		return "", err
	}
	caller, _ := e.Caller(d.Identity)
	approver, ok := e.Approver(d.Group)
	if !ok {
		return "", fmt.Errorf("dev: no review rule has approver group %q", d.Group)
	}
	fmt.Fprintf(w, "\n%s\n", paint("1", d.Title))
	fmt.Fprintf(w, "   $ PGPASSWORD=$(cat %s) psql \"%s\" -c \"%s\"\n", caller.TokenFile, e.ConnString(d.Resource, d.Identity), d.SQL)

	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, psql, "-X", "-P", "pager=off", e.ConnString(d.Resource, d.Identity), "-c", d.SQL)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+tok, "PGCONNECT_TIMEOUT=10", "PGAPPNAME=gatehouse-dev")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("dev: psql: %w", err)
	}
	var mu sync.Mutex
	var out strings.Builder
	held := make(chan string, 1)
	done := make(chan error, 1)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			out.WriteString(line + "\n")
			fmt.Fprintf(w, "   %s\n", line)
			mu.Unlock()
			if x := approvalIDRE.FindString(line); x != "" && strings.Contains(line, "NOTICE") {
				select {
				case held <- x:
				default:
				}
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		done <- err
	}()
	select {
	case id = <-held:
	case err := <-done:
		return "", fmt.Errorf("the statement was not held for approval (psql: %v)", err)
	case <-ctx.Done():
		return "", fmt.Errorf("no NOTICE of a hold within a minute")
	}

	mu.Lock()
	fmt.Fprintf(w, "\n   %s\n   $ export GATEHOUSE_ADDR=http://%s GATEHOUSE_TOKEN=$(cat %s)\n", paint("2", "# in another terminal, an approver in "+d.Group+":"), e.Gateway.AdminAddr, approver.TokenFile)
	mu.Unlock()
	cli := func(args ...string) error {
		mu.Lock()
		fmt.Fprintf(w, "   $ gatehouse %s\n", strings.Join(quoteArgs(args), " "))
		mu.Unlock()
		c := exec.CommandContext(ctx, gatehouse, args...)
		c.Env = append(os.Environ(), "GATEHOUSE_TOKEN="+mustRead(approver.TokenFile), "GATEHOUSE_ADDR=http://"+e.Gateway.AdminAddr, "NO_COLOR=1")
		b, err := c.CombinedOutput()
		mu.Lock()
		for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
			fmt.Fprintf(w, "   %s\n", line)
		}
		mu.Unlock()
		if err != nil {
			return fmt.Errorf("gatehouse %s: %v", strings.Join(args, " "), err)
		}
		return nil
	}
	fmt.Fprintf(w, "   %s\n", paint("2", "# psql waits; the statement has not reached PostgreSQL."))
	if err := cli("approvals", "list"); err != nil {
		_ = cmd.Process.Kill()
		return id, err
	}
	if err := cli("approvals", "approve", id, "--comment", d.Comment); err != nil {
		_ = cmd.Process.Kill()
		return id, err
	}
	fmt.Fprintf(w, "\n   %s\n", paint("2", "# back in the first terminal, psql gets its result:"))
	select {
	case err := <-done:
		<-readDone
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			return id, fmt.Errorf("psql failed after the approval: %v", err)
		}
		if !strings.Contains(out.String(), d.Want) {
			return id, fmt.Errorf("psql's output lacks %q", d.Want)
		}
	case <-ctx.Done():
		return id, fmt.Errorf("psql still waits after the approval")
	}
	return id, nil
}

func mustRead(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// quoteArgs quotes arguments with spaces, as a shell line would.
func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \"'$") {
			a = "\"" + strings.ReplaceAll(a, "\"", "\\\"") + "\""
		}
		out[i] = a
	}
	return out
}
