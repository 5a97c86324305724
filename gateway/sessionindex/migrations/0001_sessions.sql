-- The session index: one row per recorded session, shared by every gateway
-- replica that names this database in its state block and uploads its
-- recordings to a bucket. It answers "who, which resource, when, sealed?"
-- without reading the bucket; the recording itself (object) stays the
-- evidence, which audit verify checks.
--
-- A row is written when the session starts (status 'open', object NULL)
-- and rewritten when its recording has been uploaded and confirmed
-- (status: what Verify said of it then: ok, crashed, unsealed, ...).
CREATE TABLE gatehouse_sessions (
	session     text PRIMARY KEY,
	-- location is the bucket URL the replica uploads to (s3://BUCKET/PREFIX/).
	location    text NOT NULL,
	identity    text NOT NULL,
	subject     text NOT NULL,
	issuer      text NOT NULL,
	resource    text NOT NULL,
	protocol    text NOT NULL,
	client_addr text NOT NULL,
	started_at  timestamptz NOT NULL,
	ended_at    timestamptz,
	status      text NOT NULL,
	events      int NOT NULL DEFAULT 0,
	object      text,
	size        bigint,
	sha256      text,
	updated_at  timestamptz NOT NULL
);

CREATE INDEX gatehouse_sessions_started ON gatehouse_sessions (started_at);
CREATE INDEX gatehouse_sessions_identity ON gatehouse_sessions (identity, started_at);
CREATE INDEX gatehouse_sessions_resource ON gatehouse_sessions (resource, started_at);
CREATE INDEX gatehouse_sessions_open ON gatehouse_sessions (location) WHERE status = 'open';
