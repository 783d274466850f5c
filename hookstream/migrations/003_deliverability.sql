-- Deliverability per provider, sender and UTC day, for `hookstream stats` and for anyone with psql.
--
-- Built on message_status, not on events: message_status holds ONE row per (provider, message,
-- recipient) with its current (monotonic) status, whereas events holds every report a provider
-- sent — a message that went queued → sent → delivered is three status events but one delivered
-- message, and a retried or duplicated report is another event. Counting events would count
-- messages several times and count a delivered message as "sent" too.
--
-- day: the UTC date of the provider's time of the current status (status_at), or of our receive
-- time when the provider gave none. sender: message_status.counterpart ('' when the provider does
-- not tell it). sent and queued are still in flight; unknown is a status we could not map.
-- delivery_rate = delivered / (delivered + failed + expired + rejected): final outcomes only, so
-- in-flight messages do not lower the rate; NULL when nothing is final yet.

CREATE VIEW deliverability_daily AS
SELECT provider,
       coalesce(counterpart, '')                                      AS sender,
       (coalesce(status_at, received_at) AT TIME ZONE 'UTC')::date    AS day,
       count(*) FILTER (WHERE status = 'delivered')                   AS delivered,
       count(*) FILTER (WHERE status = 'failed')                      AS failed,
       count(*) FILTER (WHERE status = 'expired')                     AS expired,
       count(*) FILTER (WHERE status = 'rejected')                    AS rejected,
       count(*) FILTER (WHERE status = 'sent')                        AS sent,
       count(*) FILTER (WHERE status = 'queued')                      AS queued,
       count(*) FILTER (WHERE status = 'unknown')                     AS unknown,
       count(*)                                                       AS total,
       count(*) FILTER (WHERE status = 'delivered')::numeric
           / nullif(count(*) FILTER (WHERE status IN ('delivered', 'failed', 'expired', 'rejected')), 0)
                                                                      AS delivery_rate
FROM message_status
GROUP BY 1, 2, 3;

-- A filter on the view's `day` (and `provider`) is pushed below the GROUP BY onto this exact
-- expression, so "the last 14 days" reads an index range instead of the whole table.
-- (timestamptz AT TIME ZONE 'UTC' is immutable, so it can be indexed.)
CREATE INDEX message_status_day ON message_status (((coalesce(status_at, received_at) AT TIME ZONE 'UTC')::date), provider);
