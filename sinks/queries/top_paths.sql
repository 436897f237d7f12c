-- description: Top omnichannel paths before a customer's first purchase (or churn: before=subscription_cancelled): the channels they used in order, switches only
-- param: before String = order_placed
-- param: since DateTime64(3, 'UTC') = 1970-01-01 00:00:00
-- param: until DateTime64(3, 'UTC') = 2100-01-01 00:00:00
-- param: limit UInt32 = 20
SELECT path, count() AS customers, round(avg(touches), 2) AS avg_events
FROM
(
    SELECT
        person,
        arraySort(groupArray((occurred_at, event_id, channel, event_type))) AS steps,
        arrayFirstIndex(s -> s.4 = {before:String}, steps) AS target,
        arrayStringConcat(arrayCompact(arrayMap(s -> s.3, arraySlice(steps, 1, target))), ' > ') AS path,
        target AS touches
    FROM {db:Identifier}.journeys
    WHERE occurred_at >= {since:DateTime64(3, 'UTC')}
      AND occurred_at < {until:DateTime64(3, 'UTC')}
    GROUP BY person
    HAVING target > 0
)
GROUP BY path
ORDER BY customers DESC, path
LIMIT {limit:UInt32}
