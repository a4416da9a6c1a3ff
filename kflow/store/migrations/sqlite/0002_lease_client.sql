-- The authenticated client that holds an activity's lease: reports and
-- heartbeats must come from the same client as the claim, not just carry
-- the same self-declared worker_id.
ALTER TABLE activities ADD COLUMN lease_client TEXT;
