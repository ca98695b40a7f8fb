"""The error every sub-command raises for a problem the user can fix.

Its own module, so that commands do not import `hwctl.cli` (which imports them);
`hwctl.cli.main` prints it as one message, without a traceback.
"""

from __future__ import annotations


class CLIError(Exception):
    """A problem the user can fix; printed without a traceback."""
