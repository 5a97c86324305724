package postgres

import (
	"fmt"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/celpolicy"
)

// parserSettings change how the server reads SQL text. The gateway parses
// with them fixed (UTF8, standard conforming strings), so a statement that
// changes one in the session is refused whatever the policy says: after it,
// the server could read other statements than the gateway decided.
var parserSettings = map[string]bool{"standard_conforming_strings": true, "client_encoding": true, "*": true}

// guard applies what the PostgreSQL wire needs whatever the policy says,
// after the policy's decision (core.Admission.Guard).
func guard(r celpolicy.Request, d celpolicy.Decision) celpolicy.Decision {
	req, ok := r.(*celpolicy.PostgresRequest)
	if !ok {
		return d
	}
	for _, st := range req.Statements {
		if st.Command != "SHOW" && parserSettings[st.Setting] {
			return celpolicy.Decision{Effect: bundle.EffectDeny, BundleRevision: d.BundleRevision, MatchedRules: []celpolicy.MatchedRule{},
				Reasons: []string{fmt.Sprintf("changing %s is refused by the gateway: its SQL parsing depends on it", st.Setting)}}
		}
	}
	if (d.Effect == bundle.EffectAllow || d.Effect == bundle.EffectReview) && len(d.Masks) > 0 {
		// Rows of COPY ... TO are not row messages the gateway can
		// rewrite: with masks in force, refuse rather than leak.
		for _, st := range req.Statements {
			if st.Command == "COPY" && st.CopyDirection == "to" {
				d.Effect = bundle.EffectDeny
				d.Reasons = []string{"COPY ... TO of a resource with masks is denied: the gateway cannot mask COPY output; use SELECT"}
				d.Masks = nil
				break
			}
		}
	}
	return d
}
