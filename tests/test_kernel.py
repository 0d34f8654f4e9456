"""Every explorer as the first cell of a fresh Jupyter kernel (through jupyter_client, as a frontend runs it): the
figure arrives as a PNG, and moving a control sends a different one."""
import queue
import re

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

X64 = "import jax; jax.config.update('jax_enable_x64', True)\n"  # what the EM chapters' first cell does
EXPLORERS = [("", "from opt_lab.book.display import sample_mean_explorer as make"),
             ("", "from opt_lab.book.optim_race import rosenbrock_explorer as make"),
             ("", "from opt_lab.book.mice_quadratic import mice_quadratic_explorer as make"),
             (X64, "from opt_lab.book.em_explorers import log_kv_explorer as make"),
             (X64, "from opt_lab.book.em_explorers import gig_explorer as make"),
             (X64, "from opt_lab.book.em_tutorial import em_explorer as make"),
             # every data set cut to one length: the second data set's fits run the programs the first compiled (with
             # the chapter's data sets, of two lengths, the test compiled the four families twice)
             (X64, "from functools import partial\n"
                   "from opt_lab.book.em_family_tutorial import family_datasets, family_explorer\n"
                   "make = partial(family_explorer, {name: x[:1000] for name, x in family_datasets().items()})")]

MOVE_A_CONTROL = """
control = next(iter(explorer.controls.values()))
if hasattr(control, "index") and control.options: control.index = (control.index + 1) % len(control.options)
elif isinstance(control.value, bool): control.value = not control.value
else: control.value = control.max if control.value != control.max else control.min
"""


def _execute(client, code, timeout=600):
    "Run `code`; the IOPub messages it caused, up to the kernel going idle, and its reply."
    msg_id = client.execute(code)
    messages = []
    while True:
        try: msg = client.get_iopub_msg(timeout=timeout)
        except queue.Empty: pytest.fail(f"no answer from the kernel within {timeout}s to:\n{code}")
        if msg["parent_header"].get("msg_id") != msg_id: continue
        messages.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle": break
    reply = client.get_shell_msg(timeout=timeout)
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert reply["content"]["status"] == "ok", errors or reply["content"]
    return messages


def _pngs(messages):
    return [m["content"]["data"]["image/png"] for m in messages
            if m["msg_type"] in ("display_data", "execute_result", "update_display_data") and "image/png" in m["content"].get("data", {})]


@pytest.mark.parametrize("setup,load", EXPLORERS, ids=[re.search(r"\w+_explorer\b", e[1]).group() for e in EXPLORERS])
def test_explorer_draws_in_a_fresh_kernel(setup, load):
    manager, client = jupyter_client.manager.start_new_kernel(kernel_name="python3")
    try:
        first = _execute(client, f"{setup}{load}\nexplorer = make()\nexplorer")
        shown = _pngs(first)
        assert shown, f"the first cell showed no PNG: {[m['msg_type'] for m in first]}"
        moved = _pngs(_execute(client, MOVE_A_CONTROL))
        assert moved and moved[-1] != shown[-1], "moving a control did not send a new figure"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
