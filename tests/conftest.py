"""Test configuration: hypothesis profiles and the slow marker.

The default profile runs a fast but meaningful number of generated cases; run the exhaustive
profile with ``--hypothesis-profile=slow`` (or VERISPEC_SLOW=1), and slow-marked tests with
``--runslow``.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

_COMMON = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)
settings.register_profile("default", _COMMON, max_examples=25)
settings.register_profile("slow", _COMMON, max_examples=1000)
settings.load_profile("slow" if os.environ.get("VERISPEC_SLOW") else "default")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("VERISPEC_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or VERISPEC_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
