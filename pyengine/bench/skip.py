"""``Skip``: the one exception a benchmark row raises when it cannot run here (its own module so the row
builders, bench/runners.py and bench/anchors.py, share it without importing each other)."""


class Skip(Exception):
    """A row that cannot run here; the message is the reason recorded in the report."""
