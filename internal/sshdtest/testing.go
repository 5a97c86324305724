// Package sshdtest starts a real, private OpenSSH server for tests in one
// line (internal/sshd runs it):
//
//	srv := sshdtest.Start(t)
//	// srv.Addr, srv.HostKey (to pin), srv.ClientKeyPath (authorized for srv.User)
//
// The server stops when the test ends. When sshd is not installed the test
// fails, naming the package to install.
package sshdtest

import (
	"testing"

	"github.com/gatehouse-dev/gatehouse/internal/sshd"
)

// Start runs sshd for the test.
func Start(tb testing.TB, opts ...sshd.Option) *sshd.Server {
	tb.Helper()
	s, err := sshd.Start(opts...)
	if err != nil {
		tb.Fatalf("sshdtest: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("sshd log:\n%s", s.Log())
		}
		s.Close()
	})
	return s
}
