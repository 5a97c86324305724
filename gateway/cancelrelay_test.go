package gateway

import (
	"bytes"
	"testing"
)

func TestParseCancelKey(t *testing.T) {
	pid, secret, ok := parseCancelKey("123456:0a0b0c0d")
	if !ok || pid != 123456 || !bytes.Equal(secret, []byte{10, 11, 12, 13}) {
		t.Fatalf("parse: %d %x %v", pid, secret, ok)
	}
	for _, bad := range []string{"", "1", ":ab", "x:ab", "1:", "1:zz", "4294967296:ab", "-1:ab"} {
		if _, _, ok := parseCancelKey(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}
