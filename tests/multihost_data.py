"The data and fitter settings shared by tests/test_multihost.py and its worker processes."
import numpy as np

BATCH = dict(tol=1e-9, max_iter=12)
INCREMENTAL = dict(batch_size=128, max_steps=30)
KEY = 5


def data() -> np.ndarray:
    "2,000 points of a skewed, heavy-tailed law in d = 3 (the same on every process: a seeded NumPy generator)."
    rng = np.random.default_rng(11)
    w = rng.wald(1.0, 2.0, size=2000)
    return (0.4 * w[:, None] * np.array([1.0, -0.5, 0.2]) + np.sqrt(w)[:, None] * rng.normal(size=(2000, 3))).astype(np.float64)
