"""The error a user can fix: shown as one line, without a traceback."""


class StepError(Exception):
    """Bad input or an unusable resource: the message names the problem and, where possible, the fix."""
