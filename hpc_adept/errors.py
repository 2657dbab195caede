"""Exceptions that the command line reports as one line and exit code 2.

Anything raised as an :class:`AdeptError` is a problem with the user's input (config,
files, data) rather than a bug: the CLI prints ``adept: error: <message>`` and exits 2,
without a traceback unless ``--debug`` is given.
"""


class AdeptError(Exception):
    """Base class of user-facing errors (bad input, not bugs)."""


class ConfigError(AdeptError):
    """Invalid configuration: unknown key, wrong type, out-of-range value, missing path."""


class DataError(AdeptError):
    """Invalid or unreadable input data: missing/corrupt file, wrong shape, NaN, ..."""


class StopRequested(Exception):  # noqa: N818 - a request, not an error
    """A stop signal (SIGTERM, SIGUSR1) ended the work after a checkpoint was written.

    Every rank raises it at the same point; the command exits with :data:`EXIT_STOPPED` so
    that scripts and batch systems see that the run is unfinished and can be resumed by
    running the same command again.
    """


EXIT_STOPPED = 75  # EX_TEMPFAIL: try again later
