"""Test-wide settings.

Hypothesis: no per-example deadline and no "too slow" health check. Both fail a test on
wall-clock time alone, and the suite runs on shared 2-core machines whose speed swings by
a factor of 2 (a property test that takes 250 ms once is not wrong); the number of examples
per test is unchanged, so every property is checked as hard as before.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("allq", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("allq")
