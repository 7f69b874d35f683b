"""The one exception type the data layer raises for bad or missing data."""

from __future__ import annotations

from fapm.errors import FapmError


class DataError(FapmError, ValueError):
    """A dataset file or folder is missing, unreadable or inconsistent.

    The message always names the offending path, so it can be shown to the user as is.
    """

    hint = "check data.root and data.category (docs/own_data.md)"
