"""Incremental EM on data larger than memory (nbs/52_em_stream.ipynb): a 2e7-point file is fitted with the resident set
growing by less than a quarter of the file, and a streamed fit equals the in-memory scan fed the same visit order."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opt_lab.em import IncrementalEMFitter, NormalInverseGaussian, VarianceGamma
from opt_lab.em.fitting import DataUnits, _incremental_steps, _term_in_units
from opt_lab.em.rules import RobbinsMonroUpdate
from opt_lab.em.stream import DiskRows, stream_order
from opt_lab.sharding import Rows

WORKER = Path(__file__).with_name("stream_worker.py")


@pytest.mark.slow
def test_a_file_of_2e7_points_is_fitted_in_a_quarter_of_its_size(tmp_path):
    for task in (["write", str(tmp_path), str(20_000_000)], ["fit", str(tmp_path)]):
        run = subprocess.run([sys.executable, str(WORKER), *task], capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["file_bytes"] >= 20_000_000 * 4 * 8
    assert figures["peak"] - figures["before"] < 0.25 * figures["file_bytes"], figures
    assert abs(figures["final_log_likelihood"] - figures["true_log_likelihood"]) < 0.03, figures


@pytest.mark.parametrize("family, group", [(NormalInverseGaussian, 7), (VarianceGamma, 64)])
def test_a_streamed_fit_equals_the_in_memory_scan_on_the_same_order(tmp_path, family, group):
    X = np.asarray(NormalInverseGaussian.from_classical(mu=[1.0, 0.0, 2.0], gamma=[0.3, 0.0, -0.4], sigma=np.eye(3),
                                                        mu_ig=1.0, lam=1.5).rvs(5001, seed=2))
    np.save(tmp_path / "x.npy", X.astype(np.float32).astype(np.float64))  # float64 on disk
    X = np.load(tmp_path / "x.npy")
    start, rule = family.default_init(X), RobbinsMonroUpdate(tau0=5.0)
    fitter = IncrementalEMFitter(batch_size=300, max_steps=40, eta_update=rule)  # 40 steps of 300 cross two epochs
    streamed = fitter.fit_stream(start, DiskRows(tmp_path / "x.npy", chunk_rows=999), key=9, group=group)
    units = DataUnits.of(jnp.asarray(X))
    model = units.model_in(start)
    in_units = rule.in_units(lambda term, weight: _term_in_units(units, family, term, weight))
    carry = (model, model.expectation_params(), in_units.init_state(), jnp.int32(0))
    order = jnp.asarray(stream_order(jax.random.key(9), len(X), 0, 40 * 300))
    carry, changes = _incremental_steps(carry, in_units, Rows(units.standardise(jnp.asarray(X))), units, order, 0, 40, 300, 1)
    for a, b in zip(streamed.model, units.model_out(carry[0])): np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(streamed.history.param_change, changes, rtol=1e-7, atol=1e-12)
    assert len(streamed.log_likelihoods) == 1 and streamed.n_iter == 40


def test_stream_arguments_are_checked(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((10, 2)))
    start = NormalInverseGaussian.default_init(np.random.default_rng(0).normal(size=(50, 2)))
    with pytest.raises(ValueError, match="constant"): IncrementalEMFitter().fit_stream(start, tmp_path / "x.npy")
    with pytest.raises(ValueError, match="group"): IncrementalEMFitter().fit_stream(start, tmp_path / "x.npy", group=0)
    with pytest.raises(ValueError, match="source must be"): IncrementalEMFitter().fit_stream(start, tmp_path / "none.npy")


def test_chunked_rows_fit_without_random_access_and_reach_the_same_optimum(tmp_path):
    from opt_lab.em import ChunkRows
    law = NormalInverseGaussian.from_classical(mu=[0.0, 1.0], gamma=[0.4, -0.2], sigma=[[1.0, 0.2], [0.2, 1.5]], mu_ig=1.0, lam=2.0)
    X = np.asarray(law.rvs(20_000, seed=5))
    start = NormalInverseGaussian.default_init(X)
    fitter = IncrementalEMFitter(batch_size=500, max_steps=200)
    passes = []
    def make_chunks():
        passes.append(1)
        return (X[i:i + 1500] for i in range(0, len(X), 1500))
    chunked = fitter.fit_stream(start, ChunkRows(make_chunks, buffer_rows=4000), key=1)
    in_memory = fitter.fit(start, X, key=1)
    assert abs(chunked.final_log_likelihood - in_memory.final_log_likelihood) < 2e-3
    # a count, two passes for the units, 200 x 500 rows = 5 passes of batches (one more started), one final pass
    assert 8 <= len(passes) <= 10
    with pytest.raises(ValueError, match="columns"):
        fitter.fit_stream(start, ChunkRows(lambda: iter([X[:10], X[:10, :1]])))
