-- The authenticated client that holds an activity's lease.
ALTER TABLE activities ADD COLUMN lease_client TEXT;
