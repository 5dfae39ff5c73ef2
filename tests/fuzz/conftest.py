"""Hypothesis profiles for the property-based fuzz tests.

``ci`` (the default, what ``make test`` runs): a bounded budget of examples
per property, no deadline (a shared 2-core machine must not turn into a
flaky failure), and no example database written into the checkout. A hang
is still caught: by the per-test timeout, which no property comes near.

``fuzz`` (``make fuzz``): many more examples, the example database kept in
``.hypothesis/`` so a failure found once is replayed first next time, and a
generous deadline per example so an input that is slow without being a hang
(a quadratic regular expression, say) is reported with its example.
"""

from __future__ import annotations

import datetime
import os

from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("CELLBLOCK_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    suppress_health_check=_QUIET,
    derandomize=False,
    print_blob=True,
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("CELLBLOCK_FUZZ_EXAMPLES", "20000")),
    deadline=datetime.timedelta(seconds=5),
    suppress_health_check=_QUIET,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
