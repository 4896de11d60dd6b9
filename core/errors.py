"""The error base the command line reports without a traceback.

Anything a user can fix by changing config, data or environment raises a subclass of
:class:`UserError` (plugins included), with a message that says what was wrong and what is valid.
"""


class UserError(Exception):
    """A problem with input, config or environment; its message is the whole report."""


class ConfigValueError(UserError, ValueError):
    """A config value (or a plugin option) has the right type but is not allowed."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (bad resume target, non-finite loss, replicas that drifted apart, ...)."""
