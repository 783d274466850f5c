-- The retention of message_status (workers/retention.py): final rows by the time we received their
-- status, not by the provider's time, which may be old when the report is new. Partial: rows in
-- flight are never deleted and never enter it.
CREATE INDEX message_status_final_received ON message_status (received_at)
    WHERE status IN ('delivered', 'failed', 'expired', 'rejected');
