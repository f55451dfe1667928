"""One exception family: every user-facing error says what is wrong and how to fix it."""


class PrivtuneError(Exception):
    """Base class; the CLI prints the message alone (no traceback) and exits with status 2."""


class ConfigError(PrivtuneError, ValueError):
    """A config key is unknown or its value is invalid."""


class ModelError(PrivtuneError):
    """A model cannot be found, is of an unsupported family, or cannot be split as asked."""


class DataError(PrivtuneError):
    """A dataset, its directory or one of its files is missing, or a partition is empty."""


class NonFiniteRelease(RuntimeError):
    """A device was about to upload NaN or ±inf: a defect, not bad input, so it fails loudly (with a traceback)."""
