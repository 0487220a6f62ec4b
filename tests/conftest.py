"""Shared test settings: hypothesis profiles.

    pytest                                   # the "ci" profile: few examples, fast
    HYPOTHESIS_PROFILE=dev pytest            # more examples while working on an op
    pytest --hypothesis-profile=thorough     # many examples, before a release

Deadlines are off everywhere: a first call can be slow (imports, caches), and a
shared two-core machine makes timings meaningless.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
