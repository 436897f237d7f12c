-- description: Customers with an open closed-loop alert (detractor NPS, low CSAT/CES, negative comment), oldest first, with age against the SLA
-- param: sla_s UInt32 = 86400
SELECT
    alert_id,
    kind,
    status,
    if(customer_id != '', customer_id, anonymous_id) AS customer,
    channel,
    touchpoint,
    order_id,
    score,
    text,
    occurred_at,
    dateDiff('second', occurred_at, now64(3)) AS age_s,
    age_s > {sla_s:UInt32} AS past_sla
FROM {db:Identifier}.alerts FINAL
WHERE status != 'closed'
ORDER BY occurred_at, alert_id
