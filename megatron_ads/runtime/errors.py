"""The two kinds of error the CLI maps to exit codes; each layer derives its own from one of them.

``BadInput`` (exit 2): a file, field or flag is wrong — the message names it, what was found and what
was expected. ``Failure`` (exit 1): the input was fine but the job did not succeed (a collective timed
out, a worker died, a check failed). ``ValueError``/``FileNotFoundError``/``FileExistsError`` raised by
config validation also count as bad input.
"""

from __future__ import annotations


class BadInput(ValueError):
    """Bad input: exit code 2."""


class Failure(RuntimeError):
    """The command ran and failed: exit code 1."""


BAD_INPUT = (ValueError, FileNotFoundError, FileExistsError)
"""What the CLI reports as bad input (``BadInput`` is a ``ValueError``)."""
