-- The bundle revision floor shared by every gateway replica that names this
-- database in its state block: the highest revision any of them activated,
-- and the digest of that bundle. A replica refuses a bundle below it, and
-- another bundle at it, even when its own data directory is empty (a new
-- replica, a replaced volume), so that an older signed bundle put back at
-- the bundle source cannot downgrade policy on one replica of many.
--
-- One row: id is always true.
CREATE TABLE gatehouse_bundle_floor (
	id           boolean PRIMARY KEY DEFAULT true CHECK (id),
	revision     bigint NOT NULL CHECK (revision > 0),
	digest       text NOT NULL,
	activated_at timestamptz NOT NULL
);
