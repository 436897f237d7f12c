"""The live CX page: static files (``static/``) and a read-only JSON API over the
named journey queries, served on the ClickHouse HTTP interface of the process that
owns the embedded engine (``/ui``)."""
