-- Approval requests, one row per request, shared by every gateway replica
-- that names this database in its state block.
--
-- request is the whole request as the file store writes it (format 2
-- JSON; json, not jsonb, because approver keys hold a NUL between issuer
-- and subject, which jsonb refuses). The other columns copy what queries
-- select on; the gateway writes both in one statement. Every decision
-- (who may vote, whether an approval is usable) is made by the gateway on
-- request, under the row's lock, so the store answers as the file store
-- does to the nanosecond; the timestamp columns (microseconds) only narrow
-- what is locked and read.
CREATE TABLE gatehouse_approvals (
	id          text PRIMARY KEY,
	state       text NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'cancelled')),
	issuer      text NOT NULL,
	subject     text NOT NULL,
	resource    text NOT NULL,
	hash        text NOT NULL,
	created_at  timestamptz NOT NULL,
	expires_at  timestamptz NOT NULL,
	settled_at  timestamptz,
	valid_until timestamptz,
	request     json NOT NULL
);

-- Redeem: the approved requests of one binding.
CREATE INDEX gatehouse_approvals_binding ON gatehouse_approvals (hash, subject, resource, issuer) WHERE state = 'approved';
-- Open: a requester's pending requests (the same binding, the cap).
CREATE INDEX gatehouse_approvals_requester ON gatehouse_approvals (subject, issuer) WHERE state = 'pending';
-- The expiry sweep.
CREATE INDEX gatehouse_approvals_expiry ON gatehouse_approvals (expires_at) WHERE state = 'pending';
-- Retention.
CREATE INDEX gatehouse_approvals_settled ON gatehouse_approvals (settled_at) WHERE state <> 'pending';
