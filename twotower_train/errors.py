"""The root of every error a user can fix by changing an input (config, path, checkpoint, CLI
argument). Command-line tools print such errors as one line (:mod:`twotower_train.cli`); any
other exception is a bug and keeps its traceback.

Kept import-free so that every layer (model configs, converters, data, training) can subclass it.
"""

from __future__ import annotations


class UserError(Exception):
    """A bad input; the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the key and the fix."""
