"""Errors a user can cause and fix (a bad file, a missing checkpoint, a wrong path).

The CLI prints them as one line (``error: ...``) and exits with status 2, without a traceback.
"""


class UserError(Exception):
    """Something the user can fix; the message names the file or setting and what to do."""
