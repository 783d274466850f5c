-- Every raw record, as the ingress stored it, written by the worker in the same transaction as its
-- events: the Redis stream keeps a short window, this table keeps weeks (`replay --from-archive`).
-- Partitioned by day so that retention drops whole partitions; the partitions ahead are made by
-- `hookstream migrate` and the dispatcher (workers/archive.py), the default one catches the rest.
CREATE TABLE raw_archive (
    received_at  timestamptz NOT NULL,
    stream_id    text        NOT NULL,
    provider     text        NOT NULL,
    feed         text        NOT NULL,
    method       text        NOT NULL,
    query        bytea       NOT NULL,
    content_type text        NOT NULL,
    headers      jsonb       NOT NULL,
    client       text        NOT NULL,
    body         bytea       NOT NULL,
    version      integer     NOT NULL,
    PRIMARY KEY (received_at, stream_id)
) PARTITION BY RANGE (received_at);

CREATE TABLE raw_archive_default PARTITION OF raw_archive DEFAULT;
CREATE INDEX raw_archive_provider ON raw_archive (provider, feed, received_at);
