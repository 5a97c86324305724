package approval

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
)

// The PostgreSQL store's rows carry an HMAC under the state key
// (WithRowKey), so that a row written or changed by someone with access to
// the database but not the key releases and settles nothing.

// mac is the MAC of a row (its id and request column) under the row key,
// or nil without one.
func (s *PGStore) mac(id, request string) any {
	if s.rowKey == nil {
		return nil
	}
	h := hmac.New(sha256.New, s.rowKey)
	h.Write([]byte("gatehouse approval row v1\x00"))
	h.Write([]byte(id))
	h.Write([]byte{0})
	h.Write([]byte(request))
	return hex.EncodeToString(h.Sum(nil))
}

// authentic reports whether a row's MAC verifies (always, without a key).
func (s *PGStore) authentic(id, request string, mac *string) bool {
	if s.rowKey == nil {
		return true
	}
	want := s.mac(id, request).(string)
	return mac != nil && hmac.Equal([]byte(*mac), []byte(want))
}
