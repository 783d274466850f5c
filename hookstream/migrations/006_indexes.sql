-- Only the indexes a query needs (README, "Indexes": each index and the query it serves).

-- No query reads the archive by provider: replay pages it in primary-key order (received_at,
-- stream_id), a provider filter included, and that index alone serves the range.
DROP INDEX IF EXISTS raw_archive_provider;

-- No query reads consent_changes by subject. The dashboard's consent section reads the last 14 days
-- by occurred_at, and the evidence retention (workers/retention.py) what is older than it.
DROP INDEX IF EXISTS consent_changes_subject;
CREATE INDEX consent_changes_occurred_at ON consent_changes (occurred_at);
