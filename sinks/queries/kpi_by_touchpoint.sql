-- description: A KPI (default NPS; any kpi of kpi_touchpoint, e.g. csat, ces, checkout_abandonment) per touchpoint over time, summed over channels (or one channel)
-- param: kpi String = nps
-- param: window_size UInt32 = 3600
-- param: channel String = all
-- param: since DateTime64(3, 'UTC') = 1970-01-01 00:00:00
-- param: until DateTime64(3, 'UTC') = 2100-01-01 00:00:00
SELECT
    window_start,
    touchpoint,
    sum(numerator) AS numerator,
    sum(denominator) AS denominator,
    round(if({kpi:String} = 'nps', 100, 1) * numerator / nullIf(denominator, 0), 4) AS value
FROM {db:Identifier}.kpi_touchpoint FINAL
WHERE kpi = {kpi:String}
  AND window_size = {window_size:UInt32}
  AND touchpoint != 'all'
  AND if({channel:String} = 'all', channel != 'all', channel = {channel:String})
  AND window_start >= {since:DateTime64(3, 'UTC')}
  AND window_start < {until:DateTime64(3, 'UTC')}
GROUP BY window_start, touchpoint
ORDER BY window_start, touchpoint
