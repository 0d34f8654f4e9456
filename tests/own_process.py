"""Pytest suites that run in a Python process of their own: suites that must start JAX differently from the rest of
tests/ (a device count set before JAX starts) or that compile enough XLA programs to be kept apart from the main run.

A test marked `@pytest.mark.own_process("suite.py")` gets its suite started as soon as collection ends (conftest.py), so
it runs beside the rest of the tests instead of after them; the test then waits for it and fails with the end of its
output unless every test of the suite passed."""
import subprocess
import sys
import tempfile
from pathlib import Path

_RUNNING: dict = {}


def start(name: str):
    "Start tests/`name` under pytest in a fresh interpreter (once), its output going to a temporary file."
    if name not in _RUNNING:
        suite, log = Path(__file__).with_name(name), tempfile.TemporaryFile("w+")
        process = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
                                   stdout=log, stderr=subprocess.STDOUT, text=True, cwd=suite.parents[1])
        _RUNNING[name] = process, log
    return _RUNNING[name]


def run_suite(name: str):
    "Wait for tests/`name` (starting it if collection did not); fail with the end of its output unless all passed."
    process, log = start(name)
    code = process.wait()
    log.seek(0)
    output = log.read()
    assert code == 0, output[-9000:]
    assert " passed" in output.strip().splitlines()[-1]
