-- description: The channels that have KPI windows, with their events' latest window: the choices of a channel filter
SELECT channel, max(window_end) AS latest_window_end
FROM {db:Identifier}.kpi_touchpoint
WHERE channel != 'all'
GROUP BY channel
ORDER BY channel
