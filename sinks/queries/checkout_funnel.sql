-- description: Checkout funnel by channel: checkouts reaching each step in order (windowFunnel), by the channel of checkout_started
-- param: since DateTime64(3, 'UTC') = 1970-01-01 00:00:00
-- param: until DateTime64(3, 'UTC') = 2100-01-01 00:00:00
-- param: window_s UInt32 = 86400
SELECT
    channel,
    countIf(level >= 1) AS started,
    countIf(level >= 2) AS shipping,
    countIf(level >= 3) AS payment,
    countIf(level >= 4) AS review,
    countIf(level >= 5) AS ordered,
    round(ordered / started, 4) AS conversion
FROM
(
    SELECT
        checkout_id,
        argMinIf(channel, occurred_at, event_type = 'checkout_started') AS channel,
        windowFunnel({window_s:UInt32})(
            toDateTime(occurred_at),
            event_type = 'checkout_started',
            event_type = 'checkout_step' AND JSONExtractString(properties, 'step') = 'shipping',
            event_type = 'checkout_step' AND JSONExtractString(properties, 'step') = 'payment',
            event_type = 'checkout_step' AND JSONExtractString(properties, 'step') = 'review',
            event_type = 'order_placed'
        ) AS level
    FROM {db:Identifier}.events FINAL
    WHERE checkout_id != ''
      AND occurred_at >= {since:DateTime64(3, 'UTC')}
      AND occurred_at < {until:DateTime64(3, 'UTC')}
    GROUP BY checkout_id
)
WHERE channel != ''
GROUP BY channel
ORDER BY started DESC, channel
