"""Numbered SQL migrations, applied in order by touchstream.sinks.migrate."""
