package kubernetes

import (
	"net/http"
	"strings"
)

// identityPrefixes are the headers through which an API server (or the
// front proxy it trusts) learns who a request is for: impersonation
// (Impersonate-User, -Group, -Uid, -Extra-*) and the authenticating
// proxy's (X-Remote-User, -Group, -Extra-*). A caller's copies are removed
// before anything else happens: the gateway speaks for the caller
// upstream, and only from the verified token.
var identityPrefixes = []string{"Impersonate-", "X-Remote-"}

// stripIdentityHeaders removes every identity header and the caller's
// credentials (Authorization, cookies): what reaches the upstream is the
// gateway's credential and, with impersonation, the identity it verified.
// Audit-ID goes too: the API server takes it, as written, as the ID of the
// request's event in the cluster's audit log, which the caller must not
// choose (another request's, to blur which was which).
func stripIdentityHeaders(h http.Header) {
	for k := range h {
		c := http.CanonicalHeaderKey(k)
		drop := c == "Authorization" || c == "Cookie" || c == "Proxy-Authorization" || c == "Audit-Id"
		for _, p := range identityPrefixes {
			if strings.HasPrefix(c, p) {
				drop = true
			}
		}
		if drop {
			delete(h, k)
		}
	}
	// The API server also takes a bearer token from a WebSocket
	// subprotocol: a caller's must not reach it either. It looks for the
	// prefix, as written; any protocol that holds it anywhere, in any
	// case, is dropped (none is legitimate, and a reader that matched
	// more loosely would still find no token).
	if vs := h.Values("Sec-Websocket-Protocol"); len(vs) > 0 {
		var keep []string
		for _, v := range vs {
			for p := range strings.SplitSeq(v, ",") {
				p = strings.TrimSpace(p)
				if p != "" && !strings.Contains(strings.ToLower(p), tokenSubprotocol) {
					keep = append(keep, p)
				}
			}
		}
		h.Del("Sec-Websocket-Protocol")
		if len(keep) > 0 {
			h.Set("Sec-Websocket-Protocol", strings.Join(keep, ", "))
		}
	}
}

// tokenSubprotocol is the WebSocket subprotocol that carries a bearer
// token to the API server.
const tokenSubprotocol = "base64url.bearer.authorization.k8s.io."

// bearer is the request's bearer token, or "".
func bearer(h http.Header) string {
	v := h.Get("Authorization")
	if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:])
	}
	return ""
}
