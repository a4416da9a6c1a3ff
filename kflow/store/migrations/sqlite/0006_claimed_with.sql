-- Which report's transaction claimed a running activity (claim_next): the attempt id
-- of that report, NULL for a claim by poll. A repeated report releases exactly the
-- activity its first application claimed.
ALTER TABLE activities ADD COLUMN claimed_with TEXT;
