"""Sharded EM, MICE and optimizers on eight simulated CPU devices: tests/sharding_suite.py, in a process of its own,
because the device count is fixed when JAX starts and the rest of tests/ runs on one device."""
import pytest

from own_process import run_suite


@pytest.mark.own_process("sharding_suite.py")
def test_the_sharding_suite_passes_on_eight_simulated_devices():
    run_suite("sharding_suite.py")
