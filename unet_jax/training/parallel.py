"""Data parallelism: a 1-D device mesh, batch placement, and the sharded train step.

All devices of all processes form one mesh with a single axis, ``data``. The global batch
is split evenly along it; the train state (parameters, optimizer state, batch-norm
statistics) is replicated. The step runs under ``jax.shard_map``: every device runs the
network forward and backward on its own slice of the batch, then

* the network outputs (and labels and masks) are all-gathered, so the loss is computed on
  the *whole* global batch exactly as on one device. This matters for this project's
  losses, which are not means of per-sample terms: pooled Dice sums overlaps over the
  batch, and the masked BCE divides by the batch's number of FOV pixels. Averaging
  per-device losses would be a different objective; gathering the logits (a few hundred
  kB per step) keeps the math identical to the single-device step for any device count;
* parameter gradients are summed over ``data``. Under shard_map's varying-axis checks
  (``check_vma=True``) the parameters are invariant across ``data``, so autodiff inserts
  that ``psum`` itself (the transpose of the implicit broadcast to every device). Every
  device holds an identical copy of the global loss, so the sum counts it once per device:
  the per-device objective is therefore ``loss / num_devices``, and the summed gradient is
  exactly the gradient of the global loss;
* batch norm: with a model built with ``bn_axis_name="data"`` (``--bn-sync``, the default)
  the batch statistics are ``pmean``-ed over ``data`` inside the forward pass, i.e. they
  are the global batch's statistics, again as on one device. With per-device batch norm
  (``--no-bn-sync``) every device normalises with its own slice's statistics (this
  differs from one device by design) and the running averages are ``pmean``-ed after the
  step so the replicated state stays identical on every device.

On one device all of these collectives are identities and the step computes what
:func:`unet_jax.training.steps.train_step` computes.

Multi-process (multi-host) runs call :func:`initialize_distributed` before anything else
touches JAX; each process then feeds its own ``batch_size / process_count`` examples
(its grain pipeline reads only its shard: ``make_train_dataset(..., shard=...)``), and
:func:`put_batch` assembles them into one global array.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import optax
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from unet_jax.training.state import TrainState
from unet_jax.training.steps import LossFn, heads_loss

DATA = "data"

# Environment variables that ask for a multi-process run (JAX reads the first; the other
# two are this project's, mirroring jax.distributed.initialize's arguments).
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def initialize_distributed(
    force: bool = False,
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins a multi-process JAX job when asked; returns whether it did.

    Asked means `force` (``--distributed``) or ``$JAX_COORDINATOR_ADDRESS`` set. Missing
    arguments come from ``$JAX_NUM_PROCESSES`` / ``$JAX_PROCESS_ID``, else from JAX's
    cluster auto-detection (SLURM, Open MPI, Kubernetes, Cloud TPU). Must run before any
    other JAX call. On CPU the cross-process collectives use gloo.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR)
    if not force and not coordinator_address:
        return False
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True


def make_data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``data`` over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (DATA,), axis_types=(AxisType.Explicit,), devices=devices)


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
    """The per-process batch for a `global_batch`; a clear error when it does not split evenly."""
    n_dev, n_proc = mesh.devices.size, jax.process_count()
    if global_batch % n_dev:
        where = f"{n_dev} devices" + (f" ({n_proc} processes)" if n_proc > 1 else "")
        raise ValueError(
            f"--batch-size {global_batch} is not divisible by the device count: the global batch is split "
            f"evenly over {where}; use a multiple of {n_dev} (e.g. {max(n_dev, global_batch // n_dev * n_dev)})"
        )
    return global_batch // n_proc


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles each process's local batch into global arrays split over ``data``."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (identical on every process) on every device of `mesh`.

    Python scalars become int32/float32 arrays, so the state fed to the first step has the
    same types and shardings as the state every later step returns (no second compile).
    """
    sharding = replicated(mesh)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        x = np.asarray(x)
        if x.dtype == np.int64:
            x = x.astype(np.int32)
        elif x.dtype == np.float64:
            x = x.astype(np.float32)
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, tree)


def local_copy(tree: Any) -> Any:
    """A single-device copy of a replicated pytree (this process's first device).

    Evaluation runs on it: a jitted function on replicated inputs would otherwise run
    the same computation on every device.
    """
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def _varying(x: jax.Array, axis: str) -> bool:
    t = jax.typeof(x)
    mat = getattr(t, "manual_axis_type", None)
    vary = mat.varying if mat is not None else getattr(t, "vma", frozenset())
    return axis in vary


class TrainStep:
    """The jitted data-parallel train step: ``(state, batch) -> (state, metrics)``.

    With a `sampler` (device-resident data, :mod:`unet_jax.data.device_sampler`) it is
    ``(state, data) -> (state, metrics)`` instead: `steps_per_call` steps under
    ``lax.scan``, each drawing its global batch of `batch_size` patches from the key in
    ``state.data_rng`` (every device samples only its own slice of the batch, so the
    patches do not depend on the device count); metrics gain a leading axis of
    `steps_per_call`.

    The state argument is donated. `traces` counts how often the step function was traced
    (once per compilation): it must stay 1 for a whole run.
    """

    def __init__(self, loss_fn: LossFn, mesh: Mesh, *, sampler: Any = None, batch_size: int | None = None,
                 steps_per_call: int = 1):
        self.mesh = mesh
        self.traces = 0
        n = mesh.devices.size

        def local_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
            self.traces += 1  # Python side effect: runs only while tracing
            # On one device the gather and the 1/n are skipped: they are identities, but they
            # change XLA's fusion enough to move results by an ulp, and the one-device step
            # should be bit-identical to steps.train_step.
            gather = (lambda x: lax.all_gather(x, DATA, axis=0, tiled=True)) if n > 1 else (lambda x: x)
            global_targets = {**batch, "label": gather(batch["label"]), "mask": gather(batch["mask"])}

            def compute_loss(params):
                loss, updates = heads_loss(state, params, global_targets, loss_fn, gather)
                # Every device holds this same global loss; the gradient psum (implicit,
                # see the module docstring) adds the n copies, hence the 1/n.
                return (loss / n if n > 1 else loss), (loss, updates)

            (_, (loss, updates)), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
            batch_stats = updates.get("batch_stats", state.batch_stats)
            # Per-device batch norm: average the running statistics so the state stays replicated.
            batch_stats = jax.tree.map(lambda x: lax.pmean(x, DATA) if _varying(x, DATA) else x, batch_stats)
            new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
            loss = lax.pmean(loss, DATA) if _varying(loss, DATA) else loss
            return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

        # XLA:CPU ran a U-Net step about 8x slower inside a rolled scan (a while loop, even
        # of one trip) than unrolled or alone (0.39 vs 0.05 s, measured on a 2-core AMD
        # EPYC): unroll there, at K times the compile time. Accelerators keep the loop (one
        # body to compile); K = 1 has no loop at all (below).
        unroll = True if mesh.devices.flat[0].platform == "cpu" else 1

        def sampled_steps(state: TrainState, data: Any) -> tuple[TrainState, dict]:
            def one(state, _):
                key, sub = jax.random.split(jax.random.wrap_key_data(state.data_rng))
                keys = jax.random.split(sub, batch_size)
                if n > 1:
                    per = batch_size // n
                    keys = lax.dynamic_slice_in_dim(keys, lax.axis_index(DATA) * per, per)
                state = state.replace(data_rng=jax.random.key_data(key))
                return local_step(state, sampler.sample_batch(data, keys))

            if steps_per_call == 1:
                # No loop at all: XLA:CPU ran even a one-trip, unrolled scan ~4x slower
                # (121 vs 463 images/s at K=1 vs K=2, tiny U-Net, measured).
                state, m = one(state, None)
                return state, jax.tree.map(lambda x: x[None], m)
            return lax.scan(one, state, length=steps_per_call, unroll=unroll)

        if sampler is None:
            mapped = jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(DATA)), out_specs=(P(), P()))
        else:
            mapped = jax.shard_map(sampled_steps, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()))
        # Explicit out_shardings: shard_map would return P(None, ...) per array, which equals
        # the input's P() in meaning but not in jit's cache key (a silent second compile).
        rep = replicated(mesh)
        self._jitted = jax.jit(mapped, donate_argnums=0, out_shardings=(rep, rep))

    def __call__(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
        return self._jitted(state, batch)

    def cache_size(self) -> int:
        """Compiled variants held by jit's cache (1 in a healthy run)."""
        return self._jitted._cache_size()


def describe(mesh: Mesh) -> dict[str, Any]:
    """Mesh facts for logs and results.json."""
    return {
        "devices": int(mesh.devices.size),
        "processes": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "device_kind": str(jax.devices()[0].device_kind),
    }


__all__ = [
    "DATA",
    "TrainStep",
    "check_batch_size",
    "data_sharding",
    "describe",
    "initialize_distributed",
    "local_copy",
    "make_data_mesh",
    "put_batch",
    "replicate",
    "replicated",
]
