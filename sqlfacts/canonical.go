package sqlfacts

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"unicode/utf8"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// CanonicalHash is the hex SHA-256 of sql's parse tree with every source
// position removed: two texts that differ only in whitespace, comments or
// the case of keywords hash alike, while any difference in what they do (a
// constant, a name, an operator) gives another hash. An approval is bound to
// it. Text that does not parse gets an error: it is denied anyway.
func CanonicalHash(sql string) (string, error) {
	if len(sql) > MaxSQLBytes {
		return "", ErrTooLarge
	}
	if i := strings.IndexByte(sql, 0); i >= 0 {
		return "", &ParseError{Message: "SQL text contains a NUL byte", Position: utf8.RuneCountInString(sql[:i]) + 1}
	}
	if len(sql) > depthCheckBytes {
		depth, err := estimateNesting(sql)
		if err != nil {
			return "", parseError(err)
		}
		if depth > MaxNesting {
			return "", &ParseError{Message: fmt.Sprintf("expressions nest more than %d levels deep", MaxNesting)}
		}
	}
	tree, err := pg.Parse(sql)
	if err != nil {
		return "", parseError(err)
	}
	tree.Version = 0
	stripPositions(tree.ProtoReflect())
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(tree)
	if err != nil {
		return "", fmt.Errorf("sqlfacts: canonical form: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// positionFields are where libpg_query keeps source offsets.
var positionFields = map[protoreflect.Name]bool{"location": true, "stmt_location": true, "stmt_len": true}

func stripPositions(m protoreflect.Message) {
	fds := m.Descriptor().Fields()
	for i := 0; i < fds.Len(); i++ {
		fd := fds.Get(i)
		if positionFields[fd.Name()] && !fd.IsList() && fd.Kind() != protoreflect.MessageKind {
			m.Clear(fd)
		}
	}
	eachChild(m, func(_ protoreflect.FieldDescriptor, child protoreflect.Message) bool {
		stripPositions(child)
		return true
	})
}

// Deparse is sql as PostgreSQL's parser understands it, printed back:
// comments and layout are gone, so what an approver reads is what runs.
func Deparse(sql string) (string, error) {
	if _, err := CanonicalHash(sql); err != nil {
		return "", err
	}
	tree, err := pg.Parse(sql)
	if err != nil {
		return "", parseError(err)
	}
	out, err := pg.Deparse(tree)
	if err != nil {
		return "", fmt.Errorf("sqlfacts: deparse: %w", err)
	}
	return out, nil
}
