// Package benchmem measures what idle sessions cost the gateway in the
// benchmark commands (internal/benchpg, internal/benchssh): the gateway
// runs in the benchmark's process, and a child process (the same binary,
// re-run with its own flags) holds the sessions, so that the growth of
// this process's resident memory is the gateway's alone.
package benchmem

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// RSS is this process's resident memory after a collection.
func RSS() int64 {
	runtime.GC()
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// Growth runs this binary again with args as the child that holds the
// sessions: it must print "ready" once they are open, and keep them until
// its stdin closes (Hold does both). Growth returns how much this process
// grew while they were held.
func Growth(args ...string) (int64, error) {
	before := RSS()
	child := exec.Command(os.Args[0], args...)
	stdin, err := child.StdinPipe()
	if err != nil {
		return 0, err
	}
	out, err := child.StdoutPipe()
	if err != nil {
		return 0, err
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		_ = child.Process.Kill()
		_ = child.Wait()
		return 0, fmt.Errorf("the child did not hold its sessions: %q %v", line, err)
	}
	time.Sleep(500 * time.Millisecond)
	after := RSS()
	stdin.Close()
	_ = child.Wait()
	return after - before, nil
}

// Hold is the child's side: once open has opened the sessions, it says
// "ready" and waits for stdin to close.
func Hold(open func() error) error {
	if err := open(); err != nil {
		return err
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}
