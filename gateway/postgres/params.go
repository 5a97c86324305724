package postgres

import (
	"crypto/sha256"
	"database/sql/driver"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/gatehouse-dev/gatehouse/sqlfacts"
)

// boundParams are an extended-protocol execution's parameters, copied out
// of the Bind message (pgproto3 reuses its buffers).
type boundParams struct {
	formats []int16
	values  [][]byte
	// declared are the types the client gave in its Parse (0: let the
	// server infer): the same bytes are other values under other types,
	// so they are part of what an approval binds.
	declared []uint32
	// oids are the parameters' types as the server resolved them, when
	// known: how approvers read binary values.
	oids []uint32
}

func copyParams(m *pgproto3.Bind) *boundParams {
	if len(m.Parameters) == 0 {
		return nil
	}
	// Every Bind pays this: one buffer for all the values.
	n := 0
	for _, v := range m.Parameters {
		n += len(v)
	}
	buf := make([]byte, 0, n)
	p := &boundParams{formats: append([]int16(nil), m.ParameterFormatCodes...), values: make([][]byte, len(m.Parameters))}
	for i, v := range m.Parameters {
		if v != nil {
			start := len(buf)
			buf = append(buf, v...)
			p.values[i] = buf[start:len(buf):len(buf)]
		}
	}
	return p
}

// format is parameter i's format code (0 text, 1 binary), by the protocol's
// rules: none means all text, one applies to all.
func (p *boundParams) format(i int) int16 {
	switch len(p.formats) {
	case 0:
		return 0
	case 1:
		return p.formats[0]
	}
	if i < len(p.formats) {
		return p.formats[i]
	}
	return 0
}

// display shows the parameters as an approver reads them.
func (p *boundParams) display(types *typeNames) []string {
	if p == nil {
		return nil
	}
	out := make([]string, len(p.values))
	for i, v := range p.values {
		name := fmt.Sprintf("$%d", i+1)
		if i < len(p.oids) {
			if t, ok := types.name(p.oids[i]); ok {
				name += "::" + t
			}
		}
		switch {
		case v == nil:
			out[i] = name + " = NULL"
		case p.format(i) == 0 && utf8.Valid(v):
			out[i] = fmt.Sprintf("%s = '%s'", name, strings.ReplaceAll(string(v), "'", "''"))
		case p.format(i) == 1 && i < len(p.oids):
			if text, ok := types.decode(p.oids[i], v); ok {
				out[i] = fmt.Sprintf("%s = '%s'", name, strings.ReplaceAll(text, "'", "''"))
				break
			}
			fallthrough
		default:
			out[i] = fmt.Sprintf("%s = binary 0x%s", name, hex.EncodeToString(v))
		}
	}
	return out
}

// requestHash binds an approval to what will run: the SQL's parse tree
// (sqlfacts.CanonicalHash), the parameter types declared in Parse, and each
// parameter's format and bytes.
func requestHash(sql string, p *boundParams) (string, error) {
	tree, err := sqlfacts.CanonicalHash(sql)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write([]byte("gatehouse/postgres/v1\x00"))
	h.Write([]byte(tree))
	if p != nil {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(p.declared)))
		h.Write(n[:])
		for _, oid := range p.declared {
			binary.BigEndian.PutUint32(n[:], oid)
			h.Write(n[:])
		}
		binary.BigEndian.PutUint32(n[:], uint32(len(p.values)))
		h.Write(n[:])
		for i, v := range p.values {
			binary.BigEndian.PutUint32(n[:], uint32(p.format(i)))
			h.Write(n[:])
			if v == nil {
				binary.BigEndian.PutUint32(n[:], 0xffffffff)
				h.Write(n[:])
				continue
			}
			binary.BigEndian.PutUint32(n[:], uint32(len(v)))
			h.Write(n[:])
			h.Write(v)
		}
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// typeNames decodes binary parameters of PostgreSQL's built-in types for
// approvers. A pgtype Map memoizes plans and is not safe for concurrent
// use, so it is locked; there is one per Server.
type typeNames struct {
	mu sync.Mutex
	m  *pgtype.Map
}

func newTypeNames() *typeNames { return &typeNames{m: pgtype.NewMap()} }

func (t *typeNames) name(oid uint32) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	typ, ok := t.m.TypeForOID(oid)
	if !ok {
		return "", false
	}
	return typ.Name, true
}

// decode renders a binary parameter of type oid as PostgreSQL's text form
// would show it. The hash binds the bytes themselves; this is only how
// they are shown.
func (t *typeNames) decode(oid uint32, v []byte) (s string, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	typ, found := t.m.TypeForOID(oid)
	if !found {
		return "", false
	}
	defer func() {
		if recover() != nil {
			s, ok = "", false
		}
	}()
	val, err := typ.Codec.DecodeValue(t.m, oid, pgtype.BinaryFormatCode, v)
	if err != nil || val == nil {
		return "", false
	}
	if dv, isValuer := val.(driver.Valuer); isValuer {
		if x, err := dv.Value(); err == nil && x != nil {
			val = x
		}
	}
	switch x := val.(type) {
	case time.Time:
		return x.Format(time.RFC3339Nano), true
	case []byte:
		return "", false
	case string:
		return x, true
	}
	return fmt.Sprint(val), true
}
