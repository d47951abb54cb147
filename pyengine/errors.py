"""pyengine's error types that several layers raise (kept below them all, so that no import goes upward)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not match the architecture it was loaded into."""
