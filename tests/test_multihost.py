"""Multi-host EM: two local processes form one JAX cluster over 127.0.0.1 (CPU devices, gloo collectives); each loads
only its half of the rows; their batch and incremental fits equal this process's one-device fits."""
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from multihost_data import BATCH, INCREMENTAL, KEY, data
from opt_lab.em import BatchEMFitter, IncrementalEMFitter, NormalInverseGaussian

WORKER = Path(__file__).with_name("multihost_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_fit_what_one_process_fits(tmp_path):
    out, port = tmp_path / "fit.npz", free_port()
    workers = [subprocess.Popen([sys.executable, str(WORKER), str(i), str(port), str(out)], cwd=WORKER.parent,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outputs = [w.communicate(timeout=400)[0] for w in workers]
    finally:
        for w in workers: w.kill()
    assert all(w.returncode == 0 for w in workers), "\n".join(o[-3000:] for o in outputs)
    got = np.load(out)
    X = data()
    start = NormalInverseGaussian.default_init(X)
    for name, fit in (("batch", BatchEMFitter(**BATCH).fit(start, X)), ("incremental", IncrementalEMFitter(**INCREMENTAL).fit(start, X, key=KEY))):
        for field, value in fit.model._asdict().items():
            np.testing.assert_allclose(got[f"{name}_{field}"], value, rtol=1e-10, atol=1e-13, err_msg=f"{name} {field}")
        np.testing.assert_allclose(got[f"{name}_ll"], fit.log_likelihoods, rtol=1e-12)
