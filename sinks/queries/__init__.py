"""Named journey queries: one parameterised SQL file each (see sinks/queries.py)."""
