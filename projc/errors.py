"""User-facing errors. The CLI prints ``str(err)`` and exits 2 (no traceback unless --debug)."""


class ProjcError(Exception):
    """Base class of every error a user can cause (bad model, bad data, bad option)."""


class ModelLoadError(ProjcError):
    """The model file is missing, empty, truncated or fails onnx.checker."""


class UnsupportedModelError(ProjcError):
    """The model uses ops, opsets or shapes projc does not support."""


class IRParseError(ProjcError):
    """IR text that does not parse."""


class VerificationError(ProjcError):
    """An IR graph breaks an invariant (printed with the offending line in context)."""


class PassError(ProjcError):
    """A pass cannot transform the graph (e.g. a non-bipartite graph with repair off)."""


class DataError(ProjcError):
    """Training or evaluation data that does not fit the model (shape, labels, NaN)."""


class DivergenceError(ProjcError):
    """The solver produced non-finite values."""


class ParamError(ProjcError):
    """Parameters passed to the Python API that do not fit the model (name, shape, dtype)."""
