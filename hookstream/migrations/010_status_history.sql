-- Every delivery report a message received, not only the one message_status keeps: the timeline
-- of "why did message X fail?". One row per status event (its dedupe key), written in the batch's
-- transaction beside message_status; which report won, and why, is computed on read from the same
-- monotonic rule (status_rank, order_at, received_at), stored here as message_status stores it.
--
-- Partitioned by week of received_at like events (workers/event_partitions.py makes them ahead and
-- drops them past HOOKSTREAM_STATUS_HISTORY_RETENTION). received_at is the event's first delivery's
-- receive time, so a replay finds the same row.
CREATE TABLE status_history (
    event_key       text        NOT NULL,   -- the event's dedupe key (events.dedupe_key)
    provider        text        NOT NULL,
    message_ref     text        NOT NULL,
    recipient       text        NOT NULL,   -- '' when the provider does not tell it
    status          text        NOT NULL
        CHECK (status IN ('queued', 'sent', 'delivered', 'failed', 'expired', 'rejected', 'unknown')),
    status_rank     smallint    NOT NULL,
    provider_status text,                   -- verbatim
    provider_reason text,                   -- verbatim
    reason          text,                   -- normalized
    status_at       timestamptz,            -- provider time of the status
    order_at        timestamptz NOT NULL,   -- status_at, or our receive time when the provider gave none
    received_at     timestamptz NOT NULL,
    stream_id       text,                   -- the raw record: raw_archive (received_at, stream_id)
    -- 'provider': a report; 'hookstream': our own decision (receipt expiry), never the provider's word.
    decided_by      text        NOT NULL DEFAULT 'provider' CHECK (decided_by IN ('provider', 'hookstream'))
) PARTITION BY RANGE (received_at);

-- Rows no weekly partition covers (the upkeep was down for weeks); normally empty.
CREATE TABLE status_history_default PARTITION OF status_history DEFAULT;

-- Each index names the query it serves.
-- A replay (or a redelivery) of an event writes its row again: one row per event.
CREATE UNIQUE INDEX status_history_event ON status_history (event_key, received_at);
-- The timeline of one message: GET /v1/messages/{provider}/{message_ref}, hookstream message show.
CREATE INDEX status_history_timeline ON status_history (provider, message_ref);

-- Search (GET /v1/messages, hookstream message search, the dashboard's search box) reads
-- message_status, one row per message and recipient, newest first, paged by (received_at, key).
-- By the provider's message id: the primary key, probed once per provider (shared/timeline.py).
-- By phone number (E.164, parsed as the ingress does): message_status_recipient (migration 009)
-- serves it; a number's few messages are sorted after the probe (measured: bench/search.py).
-- By provider and time range.
CREATE INDEX message_status_search_provider_time ON message_status (provider, received_at DESC);
-- Receipt expiry: each provider's messages still queued or sent, oldest first (workers/expiry.py).
CREATE INDEX message_status_expiry_pending ON message_status (provider, received_at) WHERE status IN ('queued', 'sent');
