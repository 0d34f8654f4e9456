"""Test-suite configuration: the accuracy tests compare in float64, so JAX runs with x64 enabled.
float32 behaviour is tested with explicit float32 inputs."""
import contextlib
import os
import signal

os.environ.setdefault("MPLBACKEND", "Agg")

import jax
import pytest

jax.config.update("jax_enable_x64", True)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long accuracy sweeps (run in CI; deselect with -m 'not slow')")
    config.addinivalue_line("markers", "own_process(suite): the test waits for tests/<suite>, run by pytest in a process of its own")


def pytest_collection_modifyitems(items):
    "Own-process suites first: under pytest-xdist their tests are then handed out first, and the suites run beside the rest."
    items.sort(key=lambda item: item.get_closest_marker("own_process") is None)


def pytest_collection_finish(session):
    """Start the selected own-process suites now, so that they run beside the rest of the tests (tests/own_process.py).
    Under pytest-xdist every worker collects every test, so the suites start when their test runs, on its worker."""
    if os.environ.get("PYTEST_XDIST_WORKER") or session.config.option.collectonly: return
    from own_process import start
    for item in session.items:
        for mark in item.iter_markers("own_process"): start(*mark.args)


@pytest.fixture
def time_limit():
    """`with time_limit(s): ...` fails the test if the block runs longer than `s` seconds (SIGALRM): a guard against calls
    that never return, set far above their normal cost, not a speed assertion."""
    @contextlib.contextmanager
    def limit(seconds: float):
        def expire(signum, frame): raise TimeoutError(f"the call did not return within {seconds} s")
        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try: yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return limit
