"""Where it lands: ClickHouse client, migrations, the batching sink and its Kafka
loop, named journey queries and erasure."""
