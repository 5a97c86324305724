package kubernetes

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	core "github.com/gatehouse-dev/gatehouse/gateway/session"
)

func TestRefusalStatus(t *testing.T) {
	tests := []struct {
		code       core.RefusalCode
		httpStatus int
		reason     metav1.StatusReason
	}{
		{core.TokenRejected, 401, metav1.StatusReasonUnauthorized},
		{core.TokenExpired, 401, metav1.StatusReasonUnauthorized},
		{core.UnknownResource, 404, metav1.StatusReasonNotFound},
		{core.NotReady, 503, metav1.StatusReasonServiceUnavailable},
		{core.Unrecorded, 503, metav1.StatusReasonServiceUnavailable},
		{core.Unavailable, 503, metav1.StatusReasonServiceUnavailable},
		{core.Limited, 429, metav1.StatusReasonTooManyRequests},
		{core.TooMany, 429, metav1.StatusReasonTooManyRequests},
		{core.Cancelled, 499, "Cancelled"},
		{core.Denied, 403, metav1.StatusReasonForbidden},
		{core.Revoked, 403, metav1.StatusReasonForbidden},
		{core.Pending, 403, metav1.StatusReasonForbidden},
		{core.ApprovalDenied, 403, metav1.StatusReasonForbidden},
		{core.Idle, 403, metav1.StatusReasonForbidden},
		{core.RefusalCode(0), 403, metav1.StatusReasonForbidden},
		{core.RefusalCode(999), 403, metav1.StatusReasonForbidden},
	}
	for _, tc := range tests {
		r := &core.Refusal{Code: tc.code, Message: "gatehouse: " + tc.code.String() + ".", Detail: "Rule \"no-secrets\": secrets are off limits.", Hint: "Ask the platform team."}
		w := httptest.NewRecorder()
		writeRefusal(w, r)
		if w.Code != tc.httpStatus {
			t.Errorf("%v: HTTP %d, want %d", tc.code, w.Code, tc.httpStatus)
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("%v: Content-Type %q", tc.code, ct)
		}
		if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
			t.Errorf("%v: Cache-Control %q", tc.code, cc)
		}
		// Decoded as client-go decodes it.
		var st metav1.Status
		if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil {
			t.Fatalf("%v: %v\n%s", tc.code, err, w.Body)
		}
		want := metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
			Message: r.Text(), Reason: tc.reason, Code: int32(tc.httpStatus)}
		if st.Kind != want.Kind || st.APIVersion != want.APIVersion || st.Status != want.Status || st.Message != want.Message ||
			st.Reason != want.Reason || st.Code != want.Code || st.Details != nil {
			t.Errorf("%v: Status %+v, want %+v", tc.code, st, want)
		}
		if st.Message != `gatehouse: `+tc.code.String()+`. Rule "no-secrets": secrets are off limits. Ask the platform team.` {
			t.Errorf("%v: message %q", tc.code, st.Message)
		}
		// kubectl prints the error client-go makes of it.
		err := apierrors.FromObject(&st)
		if err.Error() != r.Text() {
			t.Errorf("%v: client error %q", tc.code, err.Error())
		}
		switch tc.httpStatus {
		case http.StatusForbidden:
			if !apierrors.IsForbidden(err) {
				t.Errorf("%v: not a Forbidden error", tc.code)
			}
		case http.StatusUnauthorized:
			if !apierrors.IsUnauthorized(err) {
				t.Errorf("%v: not an Unauthorized error", tc.code)
			}
		case http.StatusNotFound:
			if !apierrors.IsNotFound(err) {
				t.Errorf("%v: not a NotFound error", tc.code)
			}
		case http.StatusServiceUnavailable:
			if !apierrors.IsServiceUnavailable(err) {
				t.Errorf("%v: not a ServiceUnavailable error", tc.code)
			}
		case http.StatusTooManyRequests:
			if !apierrors.IsTooManyRequests(err) {
				t.Errorf("%v: not a TooManyRequests error", tc.code)
			}
		}
	}
}

func TestWriteStatus(t *testing.T) {
	w := httptest.NewRecorder()
	writeStatus(w, http.StatusBadRequest, "BadRequest", `gatehouse: the path "/a/../b" is not in canonical form`)
	if w.Code != 400 {
		t.Fatalf("HTTP %d", w.Code)
	}
	var st metav1.Status
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Reason != metav1.StatusReasonBadRequest || st.Code != 400 || st.Message != `gatehouse: the path "/a/../b" is not in canonical form` {
		t.Errorf("Status %+v", st)
	}
	if !apierrors.IsBadRequest(apierrors.FromObject(&st)) {
		t.Error("not a BadRequest error")
	}
}
