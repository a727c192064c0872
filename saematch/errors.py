"""One exception type for every bad input, so scripts can print a single clear line."""


class SAEMatchError(Exception):
    """Bad input or state; the message names the file (or config key) and the problem."""
