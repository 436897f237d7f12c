-- description: Touchpoint x KPI grid over the last span_s seconds up to `until` (default now), summed over channels (or one channel): numerator, denominator and value per KPI and touchpoint, and over all touchpoints ('all'). The span is tiled by disjoint rolling windows (the one ending at the next step after `until`, then every window_size before it), so the sums are exact; churn and upsell divide by the stock at the earliest window's start.
-- param: span_s UInt32 = 86400
-- param: channel String = all
-- param: until DateTime64(3, 'UTC') = 2100-01-01 00:00:00
-- param: window_size UInt32 = 3600
-- param: step_s UInt32 = 300
SELECT
    kpi,
    if(grouping(tp) = 1, 'all', tp) AS touchpoint,
    sum(num) AS numerator,
    -- Churn and upsell are rates over a stock (customers, subscriptions) at the
    -- window start: over the span, the stock at its earliest window, not a sum.
    if(kpi IN ('churn', 'churn_detractor', 'upsell'), argMin(den, start), sum(den)) AS denominator,
    round(if(kpi = 'nps' OR startsWith(kpi, 'isn:'), 100, 1) * numerator / nullIf(denominator, 0), 4) AS value,
    min(start) AS since,
    max(end) AS until
FROM
(
    WITH
        toDateTime(least({until:DateTime64(3, 'UTC')}, now64(3)), 'UTC') AS at,
        toStartOfInterval(at, toIntervalSecond({step_s:UInt32})) + {step_s:UInt32} - {window_size:UInt32} AS last_start
    SELECT kpi, touchpoint AS tp, numerator AS num, denominator AS den,
           window_start AS start, window_end AS end
    FROM {db:Identifier}.kpi_touchpoint FINAL
    WHERE window_size = {window_size:UInt32}
      AND window_start <= last_start
      AND window_start > last_start - {span_s:UInt32}
      AND (toUnixTimestamp(last_start) - toUnixTimestamp(window_start)) % {window_size:UInt32} = 0
      AND touchpoint != 'all'
      AND if({channel:String} = 'all', channel != 'all', channel = {channel:String})
)
GROUP BY GROUPING SETS ((kpi, tp), (kpi))
ORDER BY kpi, touchpoint = 'all', touchpoint
