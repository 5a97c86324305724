-- mac authenticates a row's request: HMAC-SHA256, under the key the
-- replicas share (state.key in their config) and that the database does not
-- hold, of the row's id and its request column. A gateway with a key reads
-- no row whose mac does not verify, so whoever can write this table, but
-- does not have the key, cannot add an approved request or change one.
-- NULL for rows written by a gateway without a key.
ALTER TABLE gatehouse_approvals ADD COLUMN mac text;
