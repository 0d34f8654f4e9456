"""Test-suite configuration: the accuracy tests compare in float64, so JAX runs with x64 enabled.
float32 behaviour is tested with explicit float32 inputs."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax

jax.config.update("jax_enable_x64", True)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long accuracy sweeps (run in CI; deselect with -m 'not slow')")
