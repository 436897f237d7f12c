-- The sink inserts the forwarded events as they come (JSONEachRow) and leaves the
-- identity to ClickHouse: customer_id, else anonymous_id, as the row mapper set it.
ALTER TABLE {db}.events MODIFY COLUMN identity String DEFAULT if(customer_id != '', customer_id, anonymous_id) COMMENT 'Kafka key: customer_id, else anonymous_id';
