-- description: Pipeline health at `at` (default now): distinct events/s landed over the last minute (by received_at), distinct events in the last hour, seconds since the last event landed, dead letters in the last hour by reason, alerts open and past the SLA
-- param: at DateTime64(3, 'UTC') = 2100-01-01 00:00:00
-- param: sla_s UInt32 = 86400
WITH least({at:DateTime64(3, 'UTC')}, now64(3)) AS now_
SELECT
    (SELECT round(uniqExactIf(event_id, received_at > now_ - 60 AND received_at <= now_) / 60, 2)
     FROM {db:Identifier}.events) AS events_per_s,
    (SELECT uniqExactIf(event_id, received_at > now_ - 3600 AND received_at <= now_)
     FROM {db:Identifier}.events) AS events_last_hour,
    (SELECT if(count() = 0, NULL, dateDiff('millisecond', max(received_at), now_) / 1000)
     FROM {db:Identifier}.events WHERE received_at <= now_) AS seconds_since_last_event,
    (SELECT count() FROM {db:Identifier}.dead_letters FINAL
     WHERE received_at > now_ - 3600 AND received_at <= now_) AS dead_letters_last_hour,
    (SELECT arrayStringConcat(groupArray(concat(reason, ' ', toString(n))), ', ')
     FROM (SELECT reason, count() AS n FROM {db:Identifier}.dead_letters FINAL
           WHERE received_at > now_ - 3600 AND received_at <= now_
           GROUP BY reason ORDER BY reason)) AS dead_letter_reasons,
    (SELECT countIf(status != 'closed') FROM {db:Identifier}.alerts FINAL) AS alerts_open,
    (SELECT countIf(status != 'closed' AND dateDiff('second', occurred_at, now_) > {sla_s:UInt32})
     FROM {db:Identifier}.alerts FINAL) AS alerts_past_sla
