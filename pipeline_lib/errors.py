"""Errors a user can act on.

Anything deriving from :class:`PipelineError` is reported by the CLI as one line
(no traceback) and a non-zero exit code; everything else is a bug and keeps its traceback.
"""


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
