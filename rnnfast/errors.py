"""The rnnfast exception tree.

Every exception rnnfast raises derives from :class:`RnnfastError` *and* from the builtin a user would
catch for the same problem (``ValueError`` for a bad shape, ``TypeError`` for a bad dtype, ...).
"""


class RnnfastError(Exception):
    """Base class of every error raised by rnnfast."""


class ShapeError(RnnfastError, ValueError):
    """An array has the wrong rank or size."""


class DTypeError(RnnfastError, TypeError):
    """An array has a dtype that cannot be converted to float32 (or int for lengths/tokens)."""


class ArgumentError(RnnfastError, ValueError):
    """A scalar argument (hyperparameter, option) is out of its range, NaN, or otherwise invalid."""


class StateDictError(RnnfastError, ValueError):
    """A state_dict is missing entries, has unexpected ones, or has misshapen ones."""


class FormatError(RnnfastError, ValueError):
    """A weight file is corrupt, truncated, hostile or not of the expected format."""


class UnsupportedError(RnnfastError, NotImplementedError):
    """A layer, operator or option that rnnfast does not implement."""


class OutOfMemoryError(RnnfastError, MemoryError):
    """The C core could not allocate memory."""


class InternalError(RnnfastError, RuntimeError):
    """A bug in rnnfast: please report it."""


def from_status(code: int, message: str) -> RnnfastError:
    """The exception for a failed call into the C core: the one mapping of rf_status to the error tree."""
    cls = {1: ShapeError, 2: OutOfMemoryError, 3: UnsupportedError}.get(int(code), InternalError)
    return cls(message or f"the C core failed with status {int(code)}")
