-- The consent API (`hookstream api`) and the outbound change feed.

-- The change feed reads consent_changes in commit order: (txid, id) after a cursor, only below the
-- oldest transaction still running (pg_snapshot_xmin). This index serves that range scan.
CREATE INDEX consent_changes_feed ON consent_changes (txid, id);

-- A person's decisions on the possible_opt_out queue (POST /v1/consent/review/{event_id}).
-- One decision per event; `decided_by` is the API token's label, never the token. An opt_out
-- decision is applied as a consent change keyed by the same event (consent_changes.event_key,
-- decided_by set there too); change_id names it when it changed the state. No foreign keys:
-- events and consent_changes must stay truncatable on their own (tests, retention).
CREATE TABLE review_decisions (
    event_key  text        PRIMARY KEY,    -- events.dedupe_key of the possible_opt_out event
    decision   text        NOT NULL CHECK (decision IN ('opt_out', 'dismiss')),
    decided_by text        NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now(),
    change_id  bigint                      -- consent_changes.id, when the decision changed the state
);

-- The queue: possible_opt_out events nobody has decided yet. Same columns as in 001, in order.
CREATE OR REPLACE VIEW consent_review AS
    SELECT e.id, e.dedupe_key AS event_key, e.provider, e.phone AS subject, e.scope, e.body, e.keyword,
           e.occurred_at, e.received_at
    FROM events e
    WHERE e.keyword_outcome = 'possible_opt_out'
      AND NOT EXISTS (SELECT 1 FROM review_decisions d WHERE d.event_key = e.dedupe_key);

-- The queue in event order without reading every event.
CREATE INDEX events_review_queue ON events (id) WHERE keyword_outcome = 'possible_opt_out';
