"""One way for a service process to say something: a line on stderr, named by its role.

Supervisor main collects the children's stderr into one log (the embedded
service's temporary file, or the terminal or journal of ``cellblock serve``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def logger(role: str) -> Callable[[str], None]:
    prefix = f"cellblock {role}: " if role else "cellblock: "

    def log(text: str) -> None:
        sys.stderr.write(prefix + text + "\n")
        sys.stderr.flush()

    return log
