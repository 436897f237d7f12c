-- description: Time to close closed-loop alerts per kind: count, quantiles (seconds) and share closed within the SLA
-- param: sla_s UInt32 = 86400
SELECT
    kind,
    count() AS closed,
    round(quantileExact(0.5)(time_to_close_s), 1) AS p50_s,
    round(quantileExact(0.9)(time_to_close_s), 1) AS p90_s,
    round(max(time_to_close_s), 1) AS max_s,
    round(countIf(time_to_close_s <= {sla_s:UInt32}) / count(), 4) AS within_sla
FROM {db:Identifier}.alerts FINAL
WHERE status = 'closed'
GROUP BY kind
ORDER BY kind
