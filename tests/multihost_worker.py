"""One process of the two-process test in tests/test_multihost.py (not collected by pytest: run as a script).

`python tests/multihost_worker.py PROCESS_ID PORT OUT`: joins a two-process JAX cluster on 127.0.0.1:PORT (two CPU
devices per process, gloo collectives), loads only its own half of the rows with `jax.make_array_from_process_local_data`,
fits a NIG by batch and by incremental EM on the four-device mesh, and (process 0) writes the fitted parameters to OUT."""
import sys

import jax

PROCESS_ID, PORT, OUT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{PORT}", num_processes=2, process_id=PROCESS_ID,
                           initialization_timeout=120)

import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from opt_lab.em import BatchEMFitter, IncrementalEMFitter, NormalInverseGaussian
from multihost_data import BATCH, INCREMENTAL, KEY, data

X = data()
half = len(X) // 2
mesh = jax.make_mesh((4,), ("data",))
assert len(mesh.local_devices) == 2 and jax.process_count() == 2
# each process holds only its own rows: the global array is assembled from the two halves, never gathered
X_global = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), X[PROCESS_ID * half:(PROCESS_ID + 1) * half])
start = NormalInverseGaussian.default_init(X)
batch = BatchEMFitter(**BATCH).fit(start, X_global)
incremental = IncrementalEMFitter(**INCREMENTAL).fit(start, X_global, key=KEY)
if PROCESS_ID == 0:
    fields = {f"batch_{k}": np.asarray(v) for k, v in batch.model._asdict().items()}
    fields |= {f"incremental_{k}": np.asarray(v) for k, v in incremental.model._asdict().items()}
    np.savez(OUT, batch_ll=batch.log_likelihoods, incremental_ll=incremental.log_likelihoods, **fields)
jax.distributed.shutdown()
