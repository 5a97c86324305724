package recorder

import (
	"encoding/json"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// encodeEvent writes an event as one JSON line's bytes, exactly as
// json.Marshal would (TestEncodeMatchesMarshal and FuzzEncodeEvent compare
// the two), without reflection: every request and result a gateway
// forwards is encoded here, and reflection was a tenth of its CPU time.
// The hash chain covers these bytes, so byte equality keeps recordings
// exactly as verifiable as before.
//
// Events with asciicast frames or votes, and the rare values json.Marshal
// treats specially (a time outside years 0-9999, a NaN), go through
// json.Marshal. Raw fields (Request, Decision, Facts) are written as they
// are when they are in the form json.Marshal leaves them (no whitespace,
// no HTML characters), which is how the gateway makes them; anything else
// goes through json.Marshal, which compacts and escapes them.
func encodeEvent(ev *Event) ([]byte, error) { return encodeEventTo(nil, ev) }

// encodeEventTo is encodeEvent into buf's memory, when it has room.
func encodeEventTo(buf []byte, ev *Event) ([]byte, error) {
	// Room for the raw fields and the text, so that the line is not
	// copied as it grows (a request's facts alone are often 700 bytes).
	size := 384 + len(ev.Request) + len(ev.Decision) + len(ev.Facts) + len(ev.Text) + len(ev.SQL) + len(ev.Error)
	if cap(buf) < size {
		buf = make([]byte, 0, size)
	}
	if b, ok := appendEvent(buf[:0], ev); ok {
		return b, nil
	}
	// A copy goes to json.Marshal, so that ev itself does not escape:
	// the caller's event then stays on its stack (an Event is large, and
	// every statement records two).
	c := *ev
	return json.Marshal(&c)
}

func appendEvent(b []byte, ev *Event) ([]byte, bool) {
	_, offset := ev.Time.Zone()
	if len(ev.Frames) > 0 || len(ev.Votes) > 0 || ev.Time.Year() < 0 || ev.Time.Year() > 9999 || offset <= -24*3600 || offset >= 24*3600 ||
		math.IsNaN(ev.DurationMS) || math.IsInf(ev.DurationMS, 0) ||
		!ev.Marshalled && (!plainRaw(ev.Request) || !plainRaw(ev.Decision)) || !plainRaw(ev.Facts) || !plainRaw(ev.TokenGroups) || !plainRaw(ev.Claims) {
		return b, false
	}
	b = append(b, `{"seq":`...)
	b = strconv.AppendInt(b, int64(ev.Seq), 10)
	b = append(b, `,"time":"`...)
	b = ev.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","type":`...)
	b = appendString(b, ev.Type)
	b = append(b, `,"prev":`...)
	b = appendString(b, ev.Prev)

	b = appendInt(b, "format", int64(ev.Format))
	b = appendField(b, "session", ev.Session)
	b = appendField(b, "protocol", ev.Protocol)
	b = appendField(b, "identity", ev.Identity)
	b = appendField(b, "subject", ev.Subject)
	b = appendField(b, "issuer", ev.Issuer)
	b = appendStrings(b, "groups", ev.Groups)
	b = appendRaw(b, "token_groups", ev.TokenGroups)
	b = appendField(b, "provider", ev.Provider)
	b = appendRaw(b, "claims", ev.Claims)
	b = appendField(b, "resource", ev.Resource)
	if ev.BundleRevision != 0 {
		b = append(b, `,"bundle_revision":`...)
		b = strconv.AppendUint(b, ev.BundleRevision, 10)
	}
	b = appendField(b, "bundle_digest", ev.BundleDigest)
	b = appendField(b, "client_addr", ev.ClientAddr)

	b = appendField(b, "kind", ev.Kind)
	b = appendField(b, "text", ev.Text)
	b = appendRaw(b, "request", ev.Request)
	b = appendRaw(b, "decision", ev.Decision)
	b = appendField(b, "effect", ev.Effect)
	b = appendStrings(b, "rules", ev.Rules)
	b = appendField(b, "sql", ev.SQL)
	b = appendRaw(b, "facts", ev.Facts)

	b = appendInt(b, "ref", int64(ev.Ref))
	if ev.DurationMS != 0 {
		b = append(b, `,"duration_ms":`...)
		b = appendFloat(b, ev.DurationMS)
	}
	b = appendInt(b, "rows", ev.Rows)
	b = appendInt(b, "status", int64(ev.Status))
	if ev.ExitCode != nil {
		b = append(b, `,"exit_code":`...)
		b = strconv.AppendInt(b, int64(*ev.ExitCode), 10)
	}
	b = appendInt(b, "bytes", ev.Bytes)
	b = appendField(b, "error", ev.Error)
	b = appendStrings(b, "fields", ev.Fields)
	b = appendStrings(b, "columns", ev.Columns)
	b = appendField(b, "channel", ev.Channel)
	b = appendField(b, "approval", ev.Approval)
	b = appendField(b, "state", ev.State)
	b = appendField(b, "approval_hash", ev.ApprovalHash)
	b = appendStrings(b, "params", ev.Params)
	b = appendField(b, "reason", ev.Reason)
	b = appendInt(b, "lost", int64(ev.Lost))
	b = appendField(b, "key_id", ev.KeyID)
	b = appendField(b, "signature", ev.Signature)
	return append(b, '}'), true
}

// appendField writes ,"name":"value" unless value is empty (omitempty).
func appendField(b []byte, name, value string) []byte {
	if value == "" {
		return b
	}
	b = append(append(append(b, ",\""...), name...), "\":"...)
	return appendString(b, value)
}

func appendInt(b []byte, name string, v int64) []byte {
	if v == 0 {
		return b
	}
	b = append(append(append(b, ",\""...), name...), "\":"...)
	return strconv.AppendInt(b, v, 10)
}

func appendStrings(b []byte, name string, vs []string) []byte {
	if len(vs) == 0 {
		return b
	}
	b = append(append(append(b, ",\""...), name...), "\":["...)
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, v)
	}
	return append(b, ']')
}

func appendRaw(b []byte, name string, raw json.RawMessage) []byte {
	if len(raw) == 0 {
		return b
	}
	b = append(append(append(b, ",\""...), name...), "\":"...)
	return append(b, raw...)
}

// plainRaw reports whether raw JSON is in the form json.Marshal writes
// (and would leave as it is): valid, with no whitespace outside strings
// and nothing that it escapes for HTML.
func plainRaw(raw json.RawMessage) bool {
	if len(raw) == 0 {
		return true
	}
	inString := false
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; c {
		case '"':
			inString = !inString
		case '\\':
			if inString {
				i++ // the escaped byte
			}
		case ' ', '\t', '\n', '\r':
			if !inString {
				return false
			}
		case '<', '>', '&':
			return false
		case 0xE2: // U+2028 and U+2029, which json.Marshal escapes
			if i+2 < len(raw) && raw[i+1] == 0x80 && (raw[i+2] == 0xA8 || raw[i+2] == 0xA9) {
				return false
			}
		}
	}
	return json.Valid(raw)
}

// appendFloat writes a float64 as encoding/json does.
func appendFloat(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-09 becomes e-9, as encoding/json writes it.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// AppendString appends s as a JSON string exactly as encoding/json writes
// it, for encoders of other hot values (a request's facts and decision)
// whose output must equal json.Marshal's.
func AppendString(b []byte, s string) []byte { return appendString(b, s) }

// appendString writes a JSON string as encoding/json does, HTML escaping
// included: invalid UTF-8 becomes U+FFFD, and U+2028 and U+2029 are
// escaped.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
