"""The base class of the errors a user can fix (bad config, data, model file), as opposed to bugs.

Entry points print such an error as one line (plus its ``hint``) instead of a traceback.
"""

from __future__ import annotations


class FapmError(Exception):
    """An error the user can fix; its message names the file or key.

    Attributes:
        hint: one short line on what to do, printed after the message.
    """

    hint: str = ""
