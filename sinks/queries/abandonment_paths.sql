-- description: Top touchpoint paths before checkout abandonment: for each checkout started in [since, until) with no order_placed within timeout_s (and started at least timeout_s before `until`, so decided), the last `steps` touchpoints its customer (stitched) went through from lookback_s before checkout_started to the checkout's last step before the deadline, repeats collapsed; by the channel of checkout_started, or all
-- param: since DateTime64(3, 'UTC') = 1970-01-01 00:00:00
-- param: until DateTime64(3, 'UTC') = 2100-01-01 00:00:00
-- param: channel String = all
-- param: timeout_s UInt32 = 1800
-- param: lookback_s UInt32 = 1800
-- param: steps UInt32 = 6
-- param: limit UInt32 = 10
SELECT path, count() AS checkouts, round(avg(touches), 2) AS avg_events
FROM
(
    SELECT
        a.checkout_id AS checkout_id,
        arrayStringConcat(
            arraySlice(
                arrayCompact(arrayMap(s -> s.3, arraySort(groupArray((j.occurred_at, j.event_id, j.touchpoint))))),
                -toInt64({steps:UInt32})
            ),
            ' > '
        ) AS path,
        count() AS touches
    FROM
    (
        SELECT
            checkout_id,
            who,
            started_at,
            arrayMax(arrayMap(
                e -> if(e.2 IN ('checkout_started', 'checkout_step') AND e.1 <= deadline, e.1, started_at),
                events
            )) AS dropped_at
        FROM
        (
            SELECT
                JSONExtractString(properties, 'checkout_id') AS checkout_id,
                argMinIf(person, occurred_at, event_type = 'checkout_started') AS who,
                argMinIf(channel, occurred_at, event_type = 'checkout_started') AS start_channel,
                minIf(occurred_at, event_type = 'checkout_started') AS started_at,
                started_at + toIntervalSecond({timeout_s:UInt32}) AS deadline,
                countIf(event_type = 'checkout_started') AS starts,
                groupArray((occurred_at, event_type)) AS events
            FROM {db:Identifier}.journeys
            WHERE event_type IN ('checkout_started', 'checkout_step', 'order_placed')
              AND checkout_id != ''
              AND occurred_at >= {since:DateTime64(3, 'UTC')}
              AND occurred_at < {until:DateTime64(3, 'UTC')} + toIntervalSecond({timeout_s:UInt32})
            GROUP BY checkout_id
        )
        WHERE starts > 0
          AND started_at < {until:DateTime64(3, 'UTC')}
          AND deadline <= {until:DateTime64(3, 'UTC')}
          AND NOT arrayExists(e -> e.2 = 'order_placed' AND e.1 <= deadline, events)
          AND if({channel:String} = 'all', true, start_channel = {channel:String})
    ) AS a
    INNER JOIN
    (
        SELECT person, occurred_at, event_id, touchpoint
        FROM {db:Identifier}.journeys
        WHERE occurred_at >= {since:DateTime64(3, 'UTC')} - toIntervalSecond({lookback_s:UInt32})
          AND occurred_at < {until:DateTime64(3, 'UTC')}
    ) AS j ON j.person = a.who
    WHERE j.occurred_at >= a.started_at - toIntervalSecond({lookback_s:UInt32})
      AND j.occurred_at <= a.dropped_at
    GROUP BY a.checkout_id
)
GROUP BY path
ORDER BY checkouts DESC, path
LIMIT {limit:UInt32}
