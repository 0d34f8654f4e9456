"""MICE compiled: tests/mice_compiled_suite.py, run by pytest in a process of its own.

The suite compiles several dozen XLA programs. Late in a full run of tests/ (over a thousand tests, thousands of
compilations in one process), two CI runs crashed with SIGSEGV inside XLA's compiler, once compiling a large program and
once a single concatenate; neither reproduced in a shorter process. A process of its own keeps those compilations apart
from the rest of the suite, and a crash there is reported as a failure with its output instead of ending the run."""
import pytest

from own_process import run_suite


@pytest.mark.own_process("mice_compiled_suite.py")
def test_the_compiled_suite_passes_in_a_process_of_its_own():
    run_suite("mice_compiled_suite.py")
