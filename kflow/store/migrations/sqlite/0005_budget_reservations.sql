-- Budget reservations: what a running attempt has set aside from its run's budget.
ALTER TABLE activities ADD COLUMN reserved_usd TEXT NOT NULL DEFAULT '0';
