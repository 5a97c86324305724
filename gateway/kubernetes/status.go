package kubernetes

import (
	"encoding/json"
	"net/http"

	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

// status is a meta/v1 Status, the error body every Kubernetes client
// understands: kubectl prints its message ("Error from server
// (Forbidden): ...").
type status struct {
	Kind       string         `json:"kind"`
	APIVersion string         `json:"apiVersion"`
	Metadata   struct{}       `json:"metadata"`
	Status     string         `json:"status"`
	Message    string         `json:"message"`
	Reason     string         `json:"reason"`
	Details    *statusDetails `json:"details,omitempty"`
	Code       int            `json:"code"`
}

type statusDetails struct {
	Causes []statusCause `json:"causes,omitempty"`
}

type statusCause struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// writeStatus writes a failure Status with an HTTP code and a reason
// (Forbidden, Unauthorized, NotFound, BadRequest, ServiceUnavailable).
func writeStatus(w http.ResponseWriter, code int, reason, msg string) {
	b, _ := json.Marshal(status{Kind: "Status", APIVersion: "v1", Status: "Failure", Message: msg, Reason: reason, Code: code})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

// writeRefusal renders a refusal of the core as a Status: the message
// with its detail and hint, so that kubectl shows the rule and its reason.
func writeRefusal(w http.ResponseWriter, r *core.Refusal) {
	code, reason := refusalStatus(r.Code)
	writeStatus(w, code, reason, r.Text())
}

// refusalStatus maps a refusal to an HTTP status and a Status reason.
func refusalStatus(c core.RefusalCode) (int, string) {
	switch c {
	case core.TokenRejected, core.TokenExpired:
		return http.StatusUnauthorized, "Unauthorized"
	case core.UnknownResource:
		return http.StatusNotFound, "NotFound"
	case core.NotReady, core.Unrecorded, core.Unavailable:
		return http.StatusServiceUnavailable, "ServiceUnavailable"
	case core.Limited, core.TooMany:
		return http.StatusTooManyRequests, "TooManyRequests"
	case core.Cancelled:
		return 499, "Cancelled"
	}
	// Denied, Revoked, Pending, ApprovalDenied, Idle: the caller may not
	// do this (now).
	return http.StatusForbidden, "Forbidden"
}
