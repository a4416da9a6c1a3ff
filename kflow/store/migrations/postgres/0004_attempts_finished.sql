-- Cost analytics reads attempts by the time they finished.
CREATE INDEX attempts_finished ON attempts (finished_at);
