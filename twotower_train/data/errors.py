"""The one exception type of the data pipeline.

Every failure in data preparation or loading raises :class:`DataError` with a message that names
what is wrong (the file, key, token or prefix) and what to do about it, so a user never has to read
a traceback to find the fix.
"""

from __future__ import annotations

from twotower_train.errors import UserError


class DataError(UserError, ValueError):
    """A bad data input or configuration; the message names the problem and the fix."""
