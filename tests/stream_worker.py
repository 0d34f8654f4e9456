"""The memory measurement of tests/test_em_stream.py, in a fresh process (not collected by pytest: run as a script).

`python tests/stream_worker.py write DIR ROWS` writes ROWS points of a NIG law (d = 4, float64) to DIR/x.npy chunk by
chunk; `python tests/stream_worker.py fit DIR` (a second process, so that the writing leaves nothing in its heap) fits the
file once to compile, then again with `IncrementalEMFitter.fit_stream` while a thread samples the resident set (VmRSS)
every 5 ms, and prints one JSON line: the file size, the resident set after import, before the measured fit and its peak
during it, and the fitted log-likelihood beside the law's."""
import json
import sys
import threading
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np

from opt_lab.em import IncrementalEMFitter, NormalInverseGaussian

CHUNK = 1_000_000


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"): return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def write(path: Path, rows: int, law) -> None:
    "Write a .npy file a chunk at a time (plain writes: nothing of it stays mapped in this process)."
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (rows, law.dim)})
        for i, start in enumerate(range(0, rows, CHUNK)):
            f.write(np.asarray(law.rvs(min(CHUNK, rows - start), seed=i), dtype="<f8").tobytes())


LAW = dict(mu=[0.0, 1.0, -1.0, 0.5], gamma=[0.4, -0.3, 0.2, 0.0], sigma=np.eye(4) + 0.2, mu_ig=1.0, lam=2.0)


def fit(path: Path):
    imported = resident_bytes()
    law = NormalInverseGaussian.from_classical(**LAW)
    fitter = IncrementalEMFitter(batch_size=1024, max_steps=512)
    start = NormalInverseGaussian.default_init(np.load(path, mmap_mode="r")[:10_000])
    fitter.fit_stream(start, path, key=0, group=64)  # compiles every program on the same data, so the measured fit compiles nothing
    before, peak, done = resident_bytes(), [0], threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.005)
    sampler = threading.Thread(target=sample)
    sampler.start()
    t = time.perf_counter()
    result = fitter.fit_stream(start, path, key=1, group=64)
    seconds = time.perf_counter() - t
    done.set(); sampler.join()
    print(json.dumps(dict(file_bytes=path.stat().st_size, imported=imported, before=before, peak=max(peak[0], resident_bytes()), seconds=seconds,
                          final_log_likelihood=result.final_log_likelihood,
                          true_log_likelihood=float(law.marginal_log_likelihood(np.asarray(law.rvs(200_000, seed=99)))))))


if __name__ == "__main__":
    if sys.argv[1] == "write": write(Path(sys.argv[2]) / "x.npy", int(sys.argv[3]), NormalInverseGaussian.from_classical(**LAW))
    else: fit(Path(sys.argv[2]) / "x.npy")
