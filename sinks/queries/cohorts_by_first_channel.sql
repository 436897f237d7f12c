-- description: Customer cohorts by the channel of their first event and its week: size, buyers, repeat buyers, retention (an order in a later week) and churn (subscription_cancelled)
-- param: since DateTime64(3, 'UTC') = 1970-01-01 00:00:00
-- param: until DateTime64(3, 'UTC') = 2100-01-01 00:00:00
SELECT
    first_channel,
    cohort_week,
    count() AS customers,
    countIf(orders > 0) AS buyers,
    countIf(orders > 1) AS repeat_buyers,
    round(countIf(later_order) / count(), 4) AS retention,
    round(countIf(churned) / count(), 4) AS churn
FROM
(
    SELECT
        person,
        argMin(channel, occurred_at) AS first_channel,
        toStartOfWeek(min(occurred_at), 1) AS cohort_week,
        countIf(event_type = 'order_placed') AS orders,
        arrayExists(
            at -> toStartOfWeek(at, 1) > cohort_week,
            groupArrayIf(occurred_at, event_type = 'order_placed')
        ) AS later_order,
        countIf(event_type = 'subscription_cancelled') > 0 AS churned
    FROM {db:Identifier}.journeys
    WHERE occurred_at >= {since:DateTime64(3, 'UTC')}
      AND occurred_at < {until:DateTime64(3, 'UTC')}
    GROUP BY person
)
GROUP BY first_channel, cohort_week
ORDER BY cohort_week, customers DESC, first_channel
