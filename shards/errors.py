"""Errors a conversion stops with.

A conversion either writes a complete, audited shard set or stops with one of
these. Messages name the offending file and say how to fix it, so the CLI can
print them as a single line (`launch.py` catches `ConversionError`).
"""


class ConversionError(ValueError):
    """Bad input that a conversion refuses to guess around (unknown class,
    duplicate key, malformed annotation, no samples written)."""


class MissingInputError(ConversionError, FileNotFoundError):
    """An annotation, list or image file the input promises is not on disk.

    Subclasses both `ConversionError` (so the CLI prints it cleanly) and
    `FileNotFoundError` (so callers can catch the usual exception)."""
