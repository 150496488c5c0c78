"""One exception hierarchy. The CLI maps every `ImgcompressError` to exit code 2."""

from __future__ import annotations


class ImgcompressError(Exception):
    """Bad input: a recipe, checkpoint, image folder or argument the tool cannot use.

    The message is one line that names the problem and says what to do next.
    """


class RecipeError(ImgcompressError):
    """The recipe YAML is missing, unparsable or does not validate."""


class CheckpointError(ImgcompressError):
    """The checkpoint is missing, unreadable, unsafe, or matches no architecture."""


class DataError(ImgcompressError):
    """The images or other inputs for calibration/evaluation are unusable."""


class UsageError(ImgcompressError):
    """A command-line or API argument is wrong (a bad path, a bad threshold)."""


class ExportError(Exception):
    """The exported ONNX graph does not reproduce the torch model. Not bad input: a bug to report."""
