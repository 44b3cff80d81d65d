"""One error root for the project.

Each subclass also inherits the builtin it resembles, so callers may catch either
(`except FileNotFoundError` catches a missing dataroot). The CLI turns any `NetrollerError`
into one line on stderr and exit code 2; tracebacks only with `--debug`.
"""


class NetrollerError(Exception):
    """Root of every error the project raises on purpose."""


class ConfigError(NetrollerError, ValueError):
    """A configuration value is invalid; the message names the field and the value."""


class DataError(NetrollerError, ValueError):
    """Input data is malformed (a table, an index, an image); the message names the path."""


class MissingPathError(NetrollerError, FileNotFoundError):
    """A file or folder the stage needs does not exist; the message names the path."""


class CacheError(NetrollerError, ValueError):
    """The latent cache is malformed, damaged or incomplete."""


class CacheKeyMismatchError(CacheError):
    """A cache was built for something other than what it is asked for; names the differing field."""


class CacheLockedError(NetrollerError, RuntimeError):
    """Another process holds the cache's write lock."""


class ModelError(NetrollerError, ValueError):
    """A model path or checkpoint is missing, of the wrong kind, or does not match the config."""


class WorkerError(NetrollerError, RuntimeError):
    """A distributed worker failed or died; finished work is kept and a re-run resumes."""


class CacheWriteError(NetrollerError, OSError):
    """The cache could not be written (disk full, read-only, quota); names what and where. Committed shards
    are kept and nothing half-written is committed, so the same harvest resumes once the cause is fixed."""


class ClusterError(NetrollerError, ConnectionError):
    """An existing Ray cluster could not be joined (unreachable, refused, token mismatch); names the address."""
