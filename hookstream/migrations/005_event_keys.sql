-- Events partitioned by week of received_at (retention drops whole weeks), and the dedupe keys in a
-- table of their own: a partitioned table cannot hold a unique key without its partition key.
--
-- This migration only makes the new tables. `hookstream migrate` then converts the existing events
-- online (hookstream/convert_events.py): rows are copied into events_next in batches behind live
-- traffic, their keys filled into event_keys, and the two tables swapped under a short lock.

-- One row per dedupe key ever stored, for HOOKSTREAM_DEDUPE_HORIZON: the key's first delivery's
-- receive time, which is also where its event lives (events is partitioned by it). Pruned by
-- batched deletes on event_keys_received_at (workers/retention.py).
CREATE TABLE event_keys (
    dedupe_key  text        PRIMARY KEY,
    received_at timestamptz NOT NULL
);
CREATE INDEX event_keys_received_at ON event_keys (received_at);

-- The same columns as events, in order; no key of its own: event_keys is the dedupe key, and
-- (received_at, dedupe_key) finds a stored row (replay) through events_next_received_at.
CREATE TABLE events_next (
    id                bigint GENERATED ALWAYS AS IDENTITY,
    dedupe_key        text        NOT NULL,
    provider          text        NOT NULL,
    feed              text        NOT NULL,
    kind              text        NOT NULL CHECK (kind IN ('inbound', 'status', 'event', 'consent')),
    provider_event_id text,
    message_ref       text,
    phone             text,
    phone_raw         text,
    counterpart       text,
    counterpart_raw   text,
    body              text,
    status            text CHECK (status IN ('queued', 'sent', 'delivered', 'failed', 'expired', 'rejected', 'unknown')),
    provider_status   text,
    provider_reason   text,
    reason            text,
    user_ref          text,
    event_type        text,
    consent           text,
    scope             text,
    keyword           text,
    keyword_outcome   text,
    occurred_at       timestamptz,
    received_at       timestamptz NOT NULL,
    stream_id         text        NOT NULL,
    payload           jsonb       NOT NULL,
    normalizer_version integer    NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (received_at);

-- Rows no weekly partition covers (the upkeep was down for weeks); normally empty.
CREATE TABLE events_next_default PARTITION OF events_next DEFAULT;

-- Each index names the query it serves (README, "Indexes"); on a partitioned table each partition
-- gets its own.
-- `hookstream status` (the last five minutes), the dashboard's flow (the last hour), and a replay
-- finding a stored row by (received_at, dedupe_key).
CREATE INDEX events_next_received_at ON events_next (received_at);
-- The consent API: has this number been seen as the person of some event?
CREATE INDEX events_next_phone ON events_next (phone) WHERE phone IS NOT NULL;
-- The review queue (consent_review, in id order) and a decision on one of its events (by key).
CREATE INDEX events_next_review_queue ON events_next (id) WHERE keyword_outcome = 'possible_opt_out';
CREATE INDEX events_next_review_key ON events_next (dedupe_key) WHERE keyword_outcome = 'possible_opt_out';

-- The online conversion's progress: the old rows copied so far, by id (dropped at the swap).
CREATE TABLE events_conversion (copied_to bigint NOT NULL);
INSERT INTO events_conversion VALUES (0);
