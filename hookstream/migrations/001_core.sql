-- The data contract users query: events, current delivery status, consent and its audit, dead letters.

CREATE TABLE events (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedupe_key        text        NOT NULL UNIQUE,
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
);
CREATE INDEX events_received_at ON events (received_at);
CREATE INDEX events_provider_received ON events (provider, received_at);
CREATE INDEX events_phone ON events (phone);
CREATE INDEX events_message ON events (provider, message_ref);
CREATE INDEX events_possible_opt_out ON events (received_at) WHERE keyword_outcome = 'possible_opt_out';

CREATE TABLE message_status (
    provider        text        NOT NULL,
    message_ref     text        NOT NULL,
    recipient       text        NOT NULL,
    status          text        NOT NULL,
    status_rank     smallint    NOT NULL,
    provider_status text,
    provider_reason text,
    reason          text,
    status_at       timestamptz,            -- provider time of the status
    order_at        timestamptz NOT NULL,   -- status_at, or our receive time when the provider gave none
    received_at     timestamptz NOT NULL,
    counterpart     text,
    event_key       text        NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, message_ref, recipient)
);

CREATE TABLE consent (
    subject     text        NOT NULL,
    scope       text        NOT NULL,       -- what the person replied to, or '*' for every scope
    state       text        NOT NULL CHECK (state IN ('opted_in', 'opted_out')),
    changed_at  timestamptz NOT NULL,       -- provider time of the event that set this state
    confirmed_at timestamptz NOT NULL,      -- provider time of the latest event asserting it (a repeated STOP)
    keyword     text,
    provider    text        NOT NULL,
    event_key   text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, scope)
);

CREATE TABLE consent_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_key   text        NOT NULL UNIQUE, -- one change per causing event: redelivery and replay apply it once
    subject     text        NOT NULL,
    scope       text        NOT NULL,
    old_state   text,
    new_state   text        NOT NULL,
    outcome     text        NOT NULL,
    keyword     text,
    provider    text        NOT NULL,
    occurred_at timestamptz NOT NULL,       -- provider time (receive time when absent)
    received_at timestamptz NOT NULL,
    decided_by  text,                       -- an API token's label for decisions made by a person
    txid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_changes_subject ON consent_changes (subject, occurred_at);

CREATE TABLE dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id    text        NOT NULL UNIQUE,
    provider     text,
    feed         text,
    method       text,
    reason       text        NOT NULL,
    body         bytea       NOT NULL,
    query        bytea       NOT NULL,
    headers      jsonb       NOT NULL,
    content_type text,
    client       text,
    received_at  timestamptz,
    attempts     integer     NOT NULL DEFAULT 1,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    requeued_at  timestamptz
);
CREATE INDEX dead_letters_last_seen ON dead_letters (last_seen);

CREATE VIEW consent_review AS
    SELECT id, dedupe_key AS event_key, provider, phone AS subject, scope, body, keyword, occurred_at, received_at
    FROM events
    WHERE keyword_outcome = 'possible_opt_out';
