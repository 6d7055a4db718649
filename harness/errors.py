"""The project's one error family.

Every failure a user can cause (a bad config, dataset, checkpoint, CLI argument, or a model that
cannot be found) is raised as a ``HarnessError`` whose message is a single line naming the file,
key or row and what is allowed. The CLI prints that line instead of a traceback and exits 2, or 3 for
a ``TrainingError`` raised by the training loop itself (see ``harness.cli`` for every exit code).
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base class: a user-facing, one-line error."""


class ConfigError(HarnessError):
    """A run config (file, key or override) is invalid."""


class ModelResolutionError(HarnessError):
    """No snapshot of the requested model could be found, downloaded or materialized."""


class DataError(HarnessError):
    """A dataset file or row is unusable."""


class AdapterError(HarnessError):
    """An adapter cannot be built as configured for this model."""


class CheckpointError(HarnessError):
    """A checkpoint is missing, incomplete, corrupt or belongs to another model."""


class TrainingError(HarnessError):
    """Training hit a non-recoverable fault (non-finite loss or gradient, out of memory), or refused
    to write into an output folder (raised before training starts)."""
