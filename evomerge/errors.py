"""Error types. A ``UserInputError`` is something the user can fix; the CLI prints its message
as one clear line (no traceback) and exits with status 2."""

from __future__ import annotations


class EvomergeError(Exception):
    """Base class for every error evomerge raises on purpose."""


class UserInputError(EvomergeError):
    """Bad input the user can fix: the message names the field, tensor or file and the fix."""


class NonFiniteInput(EvomergeError):
    """The fast path, reading inputs as stored (``ops._fast.reads_stored_bf16``), found NaN/Inf.
    Internal: the merge engine turns it into a UserInputError naming the model and tensor."""


class FitnessReturnError(EvomergeError, TypeError):
    """A fitness function returned something that is not a finite score (a string, None, NaN).
    Recorded as the candidate's FAIL reason; the message names the function and what it must
    return, so the job stores it without a traceback (the frames would point into evomerge)."""
