"""The error base the command line reports without a traceback.

Anything a user can fix by changing config, data or environment raises a subclass of
:class:`UserError` (plugins included), with a message that says what was wrong and what is valid.
"""


class UserError(Exception):
    """A problem with input, config or environment; its message is the whole report."""
