"""Errors a user can act on, and how a URL appears in their messages.

Anything deriving from :class:`PipelineError` is reported by the CLI as one line
(no traceback) and a non-zero exit code; everything else is a bug and keeps its traceback.
"""

from urllib.parse import urlsplit, urlunsplit


def redacted_url(url: str) -> str:
    """``url`` as messages, logs and MLflow may show it: scheme, host, port and path, never a
    user, a password or a query (which can carry one too). The one place that does this for
    the store's SQL URL, the data source and the MLflow tracking URI."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "<an unparseable URL>"
    if parts.scheme and str(url).startswith(f"{parts.scheme}://"):
        # Written out, not by urlunsplit, which drops the empty authority of a file URL
        # (sqlite:////abs/path would read as host "abs").
        return f"{parts.scheme}://{netloc}{parts.path}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class PipelineError(Exception):
    """A problem with the user's input, configuration or environment."""


class DataValidationError(PipelineError):
    """Input data violates the data contract (docs/data-contract.md)."""


class ConfigError(PipelineError):
    """A configuration file or option is invalid."""


class TrainingDivergedError(PipelineError):
    """The loss became NaN/inf; nothing is registered."""


class ModelLoadError(PipelineError):
    """A registered model could not be found or rebuilt."""


class RegistryUnavailableError(PipelineError):
    """The MLflow tracking server / registry could not be reached or failed mid-run; nothing
    was registered and the aliases are unchanged."""


class StoreUnavailableError(PipelineError):
    """The forecast store stayed locked or unreachable after the retries; the day's write
    was rolled back."""
