-- Consent as evidence: where every change came from, a ledger nobody edits, a hash chain per
-- subject, consent imported from other channels, erasure, and reassigned numbers.

-- Where each change came from. `source`: keyword (an inbound text decided by the keyword policy),
-- provider_signal (Mx2 optout/yes, smsmode 3999), import (POST /v1/consent/records), review (a
-- person's decision). The evidence: the raw stream entry and its archive row (`archive_key` is
-- "<received_at>/<stream id>", the raw_archive primary key), the provider's message id, or the
-- import's id; the inbound text and its SHA-256; the keyword policy version that decided it; the
-- opt-out reach in force; who acted (an API token's label, or `worker`).
ALTER TABLE consent_changes
    ADD COLUMN source              text NOT NULL DEFAULT 'keyword'
        CHECK (source IN ('keyword', 'provider_signal', 'import', 'review')),
    ADD COLUMN stream_id           text,
    ADD COLUMN archive_key         text,
    ADD COLUMN provider_message_id text,
    ADD COLUMN import_id           text,
    ADD COLUMN inbound_text        text,
    ADD COLUMN inbound_sha256      text,
    ADD COLUMN policy_version      text,
    ADD COLUMN reach               text NOT NULL DEFAULT 'scope' CHECK (reach IN ('scope', 'all')),
    ADD COLUMN actor               text NOT NULL DEFAULT 'worker',
    ADD COLUMN evidence            jsonb,
    ADD COLUMN seq                 bigint,     -- the change's place in its subject's chain, from 1
    ADD COLUMN prev_hash           text,       -- the hash of the subject's previous change (NULL for the first)
    ADD COLUMN hash                text;       -- SHA-256 over prev_hash and this row's content

UPDATE consent_changes SET source = CASE WHEN decided_by IS NOT NULL THEN 'review'
                                         WHEN keyword IS NULL THEN 'provider_signal' ELSE 'keyword' END,
                           actor = coalesce(decided_by, 'worker');

-- A row's hash: the previous hash, then the row's content as one JSON array (jsonb's text form is
-- canonical; times are written in UTC whatever the session's time zone). Every column but the
-- transaction id is covered; `hookstream consent verify` recomputes it with this same function.
CREATE FUNCTION consent_change_digest(c consent_changes) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT encode(sha256(convert_to(coalesce(c.prev_hash, '') || '|' || jsonb_build_array(
        c.seq, c.id, c.event_key, c.subject, c.scope, c.old_state, c.new_state, c.outcome, c.keyword, c.provider,
        to_char(c.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        to_char(c.received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        to_char(c.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        c.decided_by, c.source, c.stream_id, c.archive_key, c.provider_message_id, c.import_id, c.inbound_text,
        c.inbound_sha256, c.policy_version, c.reach, c.actor, c.evidence)::text, 'UTF8')), 'hex')
$$;

-- What retention removed from a chain: the links, without the content, so that the chain still
-- verifies across them. Erasure rewrites rows instead (and rehashes their chain); both log here.
CREATE TABLE consent_changes_removed (
    subject    text        NOT NULL,
    seq        bigint      NOT NULL,
    prev_hash  text,
    hash       text        NOT NULL,
    change_id  bigint      NOT NULL,
    procedure  text        NOT NULL,
    removed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, seq)
);

CREATE TABLE consent_ledger_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    procedure  text        NOT NULL CHECK (procedure IN ('retention', 'erasure')),
    actor      text        NOT NULL,
    subject    text,                         -- erasure: the keyed hash; retention: NULL (many subjects)
    rows       integer     NOT NULL,
    done_at    timestamptz NOT NULL DEFAULT now()
);

-- The subject's chain in order: the append, verify, export and erasure all read it by subject.
-- Existing rows are chained once, in id order (their insertion order).
UPDATE consent_changes c SET seq = o.seq
FROM (SELECT id, row_number() OVER (PARTITION BY subject ORDER BY id) AS seq FROM consent_changes) o
WHERE o.id = c.id;

-- (Re)compute the hashes of one subject's chain from its first row, across removed links; used here
-- and by erasure after it rewrote the subject's rows. Callers that run after the guard below exists
-- set hookstream.ledger_procedure first.
CREATE FUNCTION consent_rechain(p_subject text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    link record;
    previous text := NULL;
    done integer := 0;
BEGIN
    FOR link IN
        SELECT seq, hash, TRUE AS removed, NULL::bigint AS id FROM consent_changes_removed WHERE subject = p_subject
        UNION ALL
        SELECT seq, NULL, FALSE, id FROM consent_changes WHERE subject = p_subject
        ORDER BY 1
    LOOP
        IF link.removed THEN
            previous := link.hash;
        ELSE
            UPDATE consent_changes c SET prev_hash = previous WHERE c.id = link.id;
            UPDATE consent_changes c SET hash = consent_change_digest(c) WHERE c.id = link.id RETURNING c.hash INTO previous;
            done := done + 1;
        END IF;
    END LOOP;
    RETURN done;
END
$$;

SELECT consent_rechain(subject) FROM (SELECT DISTINCT subject FROM consent_changes) s;

ALTER TABLE consent_changes ALTER COLUMN seq SET NOT NULL, ALTER COLUMN hash SET NOT NULL;
CREATE UNIQUE INDEX consent_changes_chain ON consent_changes (subject, seq);

-- The advisory lock of a subject's consent: one of 1024 buckets (shared.consent.LOCK_SQL says why).
CREATE FUNCTION consent_lock_bucket(subject text) RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (hashtextextended(subject, 0) & 1023)::integer
$$;

-- Appending: the next link of the subject's chain, under the subject's advisory lock (the one
-- shared.consent takes first, so a writer already holding it goes on): two writers of one subject
-- are serialized and never both take the same previous hash (and the unique (subject, seq) would
-- refuse a fork). A BEFORE trigger sees the rows inserted before it by the same statement, so one
-- multi-row INSERT chains its own rows too.
CREATE FUNCTION consent_changes_append() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('hookstream.consent'), consent_lock_bucket(NEW.subject));
    SELECT seq, hash INTO last FROM (
        SELECT seq, hash FROM consent_changes WHERE subject = NEW.subject
        UNION ALL
        SELECT seq, hash FROM consent_changes_removed WHERE subject = NEW.subject
    ) links ORDER BY seq DESC LIMIT 1;
    NEW.seq := coalesce(last.seq, 0) + 1;
    NEW.prev_hash := last.hash;
    NEW.hash := consent_change_digest(NEW);
    RETURN NEW;
END
$$;
CREATE TRIGGER consent_changes_append BEFORE INSERT ON consent_changes
    FOR EACH ROW EXECUTE FUNCTION consent_changes_append();

-- Append-only. Only the two procedures that must touch old rows may: retention deletes (and keeps
-- the links in consent_changes_removed), erasure rewrites (and rehashes); each says so in this
-- transaction-local setting and logs what it did in consent_ledger_log. This guards against
-- mistakes and casual edits; the hash chain is what shows an edit made around it.
CREATE FUNCTION consent_changes_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    procedure text := coalesce(current_setting('hookstream.ledger_procedure', true), '');
BEGIN
    IF (TG_OP = 'DELETE' AND procedure = 'retention') OR (TG_OP = 'UPDATE' AND procedure = 'erasure') THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    RAISE EXCEPTION 'consent_changes is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation',
              HINT = 'only the retention and erasure procedures change recorded consent changes';
END
$$;
CREATE TRIGGER consent_changes_guard BEFORE UPDATE OR DELETE ON consent_changes
    FOR EACH ROW EXECUTE FUNCTION consent_changes_guard();

-- Retention of the evidence (workers/retention.py): a batch of changes past the cutoff, except the
-- one that set a subject's current state, removed with their links kept and the removal logged.
-- Returns the ids removed (one row each, so a caller can count them).
CREATE FUNCTION consent_evidence_retention(cutoff timestamptz, batch integer) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    removed integer;
BEGIN
    PERFORM set_config('hookstream.ledger_procedure', 'retention', true);
    RETURN QUERY
    WITH gone AS (
        DELETE FROM consent_changes WHERE id = ANY(ARRAY(
            SELECT cc.id FROM consent_changes cc WHERE cc.occurred_at < cutoff
              AND NOT EXISTS (SELECT 1 FROM consent c WHERE c.subject = cc.subject AND c.scope = cc.scope
                              AND c.event_key = cc.event_key)
            LIMIT batch))
        RETURNING subject, seq, prev_hash, hash, id
    ), kept AS (
        INSERT INTO consent_changes_removed (subject, seq, prev_hash, hash, change_id, procedure)
        SELECT subject, seq, prev_hash, hash, id, 'retention' FROM gone RETURNING change_id
    )
    SELECT change_id FROM kept;
    GET DIAGNOSTICS removed = ROW_COUNT;
    PERFORM set_config('hookstream.ledger_procedure', '', true);
    IF removed > 0 THEN
        INSERT INTO consent_ledger_log (procedure, actor, rows) VALUES ('retention', 'retention', removed);
    END IF;
END
$$;

-- Consent collected elsewhere (POST /v1/consent/records), one row per client record id: the
-- idempotency key (the same id with other content is refused) and the evidence as sent.
CREATE TABLE consent_records (
    id          text        PRIMARY KEY,
    digest      text        NOT NULL,       -- SHA-256 of the record's content, to tell a retry from a clash
    import_id   text        NOT NULL,       -- the request that brought it
    subject     text        NOT NULL,
    scope       text        NOT NULL,
    state       text        NOT NULL CHECK (state IN ('opted_in', 'opted_out')),
    occurred_at timestamptz NOT NULL,
    source      text        NOT NULL,       -- where it was collected: web_form, checkout, paper, ...
    evidence    jsonb       NOT NULL,
    imported_by text        NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_records_subject ON consent_records (subject);

-- Numbers reported disconnected or reassigned (POST /v1/consent/deactivations): consent last
-- confirmed before `deactivated_at` is `stale` until a new opt-in.
CREATE TABLE consent_deactivations (
    subject        text        NOT NULL,
    deactivated_at timestamptz NOT NULL,
    source         text        NOT NULL,
    reported_by    text        NOT NULL,
    reported_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, deactivated_at)
);

-- Erasure requests (DELETE /v1/subjects/{subject}): who, when, and how many rows of each table.
CREATE TABLE erasures (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_hash text        NOT NULL,       -- the keyed hash that replaced the subject
    requested_by text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    counts       jsonb       NOT NULL
);
CREATE INDEX erasures_subject ON erasures (subject_hash);

-- Exports and erasure find a person's statuses by recipient.
CREATE INDEX message_status_recipient ON message_status (recipient);

-- Erasure of one person (DELETE /v1/subjects/{subject}, shared/erasure.py): the subject and its
-- texts become `p_hash` (a keyed hash made by the caller, who holds the key) in every table.
-- Opted-in consent is dropped; opted-out consent is kept under the hash, so the person stays
-- suppressed (lookups ask for the hash too). The person's consent changes join the hash's chain
-- after its earlier links (an earlier erasure) and the chain is rehashed: old hashes covered the
-- number. Raw records are found by the person's events and by any notation of the number in their
-- bytes (`p_notations`). Audited in erasures (and consent_ledger_log); idempotent: a second call
-- finds nothing left. `p_stream` is what the caller did in Redis, kept in the audit row.
CREATE FUNCTION consent_erase(p_subject text, p_hash text, p_notations text[], p_actor text, p_stream jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    counts jsonb := '{}';
    n integer;
    changed integer;
    base bigint;
    marker bytea := convert_to(p_hash, 'UTF8');
    raw bytea[] := ARRAY(SELECT convert_to(x, 'UTF8') FROM unnest(p_notations) AS x);
    ids text[];
BEGIN
    PERFORM set_config('hookstream.ledger_procedure', 'erasure', true);
    PERFORM pg_advisory_xact_lock(hashtext('hookstream.consent'), b)
    FROM (SELECT DISTINCT consent_lock_bucket(s) AS b FROM unnest(ARRAY[p_subject, p_hash]) AS s ORDER BY 1) AS buckets;

    UPDATE events SET phone = p_hash, phone_raw = p_hash, body = CASE WHEN body IS NULL THEN NULL ELSE p_hash END,
                      payload = jsonb_build_object('erased', p_hash), updated_at = now()
    WHERE phone = p_subject;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('events', n);

    DELETE FROM message_status h USING message_status m
    WHERE h.recipient = p_hash AND m.recipient = p_subject AND h.provider = m.provider AND h.message_ref = m.message_ref;
    UPDATE message_status SET recipient = p_hash, updated_at = now() WHERE recipient = p_subject;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('message_status', n);

    -- Every report of those messages (migration 010's table; PL/pgSQL resolves it when this runs),
    -- found through their timeline index rather than by scanning every partition for the number.
    UPDATE status_history h SET recipient = p_hash
    FROM (SELECT DISTINCT provider, message_ref FROM message_status WHERE recipient = p_hash) AS m
    WHERE h.provider = m.provider AND h.message_ref = m.message_ref AND h.recipient = p_subject;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('status_history', n);

    DELETE FROM consent WHERE subject = p_subject AND state = 'opted_in';
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM consent h USING consent m WHERE h.subject = p_hash AND m.subject = p_subject AND h.scope = m.scope;
    UPDATE consent SET subject = p_hash, updated_at = now() WHERE subject = p_subject;
    GET DIAGNOSTICS changed = ROW_COUNT; counts := counts || jsonb_build_object('consent', n + changed);

    SELECT coalesce(max(seq), 0) INTO base FROM (
        SELECT seq FROM consent_changes WHERE subject = p_hash
        UNION ALL SELECT seq FROM consent_changes_removed WHERE subject = p_hash) AS links;
    UPDATE consent_changes SET subject = p_hash, seq = seq + base,
           inbound_text = CASE WHEN inbound_text IS NULL THEN NULL ELSE p_hash END,
           evidence = CASE WHEN evidence IS NULL THEN NULL ELSE jsonb_build_object('erased', p_hash) END
    WHERE subject = p_subject;
    GET DIAGNOSTICS changed = ROW_COUNT; counts := counts || jsonb_build_object('consent_changes', changed);
    UPDATE consent_changes_removed SET subject = p_hash, seq = seq + base WHERE subject = p_subject;
    IF changed > 0 THEN
        PERFORM consent_rechain(p_hash);
        INSERT INTO consent_ledger_log (procedure, actor, subject, rows) VALUES ('erasure', p_actor, p_hash, changed);
    END IF;

    UPDATE consent_records SET subject = p_hash, evidence = jsonb_build_object('erased', p_hash)
    WHERE subject = p_subject;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('consent_records', n);

    INSERT INTO consent_deactivations (subject, deactivated_at, source, reported_by, reported_at)
    SELECT p_hash, deactivated_at, source, reported_by, reported_at FROM consent_deactivations WHERE subject = p_subject
    ON CONFLICT DO NOTHING;
    DELETE FROM consent_deactivations WHERE subject = p_subject;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('consent_deactivations', n);

    ids := ARRAY(SELECT DISTINCT stream_id FROM events WHERE phone = p_hash);
    UPDATE raw_archive SET body = marker, query = marker, headers = '{}'
    WHERE body IS DISTINCT FROM marker AND (stream_id = ANY(ids)
          OR EXISTS (SELECT 1 FROM unnest(raw) AS x WHERE position(x IN body) > 0 OR position(x IN query) > 0));
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('raw_archive', n);

    UPDATE dead_letters SET body = marker, query = marker, headers = '{}', reason = 'erased'
    WHERE body IS DISTINCT FROM marker AND (stream_id = ANY(ids)
          OR EXISTS (SELECT 1 FROM unnest(raw) AS x WHERE position(x IN body) > 0 OR position(x IN query) > 0
                     OR strpos(headers::text, convert_from(x, 'UTF8')) > 0));
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('dead_letters', n);

    PERFORM set_config('hookstream.ledger_procedure', '', true);
    INSERT INTO erasures (subject_hash, requested_by, counts) VALUES (p_hash, p_actor, counts || p_stream);
    RETURN counts || p_stream;
END
$$;
