"""The root of the package's user-facing errors: bad input or a run that cannot go on.

Every named error (``CheckpointError``, ``DataError``, ``ConfigError``, ...) derives from
``FCNError``; ``fcn`` prints any of them as one line and exits 2. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class FCNError(Exception):
    """A problem the user can fix; the message names the file, flag or value at fault."""
