"""``python -m supervisor.egress``: the egress proxy process (started by supervisor main)."""

import sys

from supervisor.egress.proxy import main

sys.exit(main())
