"""Exceptions a user sees. Each message names what was wrong and where (file, line, key)."""


class ModelyardError(Exception):
    """Base class: the CLI prints these as one clear line and exits 2, without a traceback."""


class ConfigError(ModelyardError):
    """A config file, key or value is wrong."""


class DataError(ModelyardError):
    """An input file is missing, unreadable or holds a bad row."""


class BundleError(ModelyardError):
    """A bundle is missing, corrupted, from an unknown schema version or for another task."""


class RunError(ModelyardError):
    """A run directory is missing, incomplete, or would be overwritten."""
