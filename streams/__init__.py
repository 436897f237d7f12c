"""What is computed: pure ingest, window, KPI, abandonment and alert logic, and the
thin Faust application around it (streams.app, run by streams.worker)."""
