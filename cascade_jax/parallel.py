"""Data parallelism: per-device step functions in the pmap style, mapped with ``jax.shard_map`` or ``jax.pmap``.

  DataParallel(backend="shard_map" | "pmap").map_step(step) / .replicate(tree) / .shard_batch(batch)

A step is written once as per-device code with collectives over the axis ``"data"``; both mappings give the same
parameters (tested on 8 forced CPU devices). See docs/design.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
BACKENDS = ("shard_map", "pmap")


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs,
) -> None:
    """Join a multi-process run: ``jax.distributed.initialize`` with cross-process CPU collectives set to gloo.

    Call it before anything touches a JAX device. With no arguments JAX finds the values itself on SLURM, Open
    MPI, Kubernetes and Cloud TPU (and reads ``JAX_COORDINATOR_ADDRESS``); elsewhere, e.g. several processes on
    one machine, give all three: the address ``host:port`` of process 0, the number of processes, this one's id.
    On CPU, cross-process collectives need an implementation; gloo is chosen unless one is already configured
    (JAX >= 0.10 defaults to gloo; older versions had none, and collectives across processes then fail).
    ``kwargs`` go to ``jax.distributed.initialize`` (e.g. ``initialization_timeout``).
    """
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id, **kwargs
    )


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    try:
        from jax.sharding import AxisType

        return jax.make_mesh((len(devices),), (AXIS,), axis_types=(AxisType.Auto,), devices=devices)
    except (ImportError, TypeError):  # Older jax without axis types.
        return Mesh(np.asarray(devices), (AXIS,))


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """How a per-device step is mapped over devices, and how host data is placed for it.

    Attributes:
      backend: ``"shard_map"`` or ``"pmap"``.
      mesh: the 1-D device mesh (shard_map); pmap uses the mesh's local devices.
    """

    backend: str = "shard_map"
    mesh: Mesh | None = None

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown data-parallel backend {self.backend!r}; choose one of {BACKENDS}")
        if self.mesh is None:
            object.__setattr__(self, "mesh", data_mesh())

    @property
    def num_devices(self) -> int:
        """Devices in the data axis (global for shard_map, local for pmap)."""
        return self.mesh.size if self.backend == "shard_map" else len(self._local_devices)

    @property
    def platform(self) -> str:
        """The mesh's device platform: ``"cpu"``, ``"gpu"``, ``"tpu"``."""
        return self.mesh.devices.flat[0].platform

    @property
    def _local_devices(self):
        return [d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]

    def map_step(
        self, step: Callable, num_extra: int = 0, donate_state: bool = True, batch_axis: int = 0,
        compiler_options: dict | None = None,
    ) -> Callable:
        """Map ``step(state, batch, *extra)``; the result takes placed state (see :meth:`replicate`).

        ``batch_axis`` is the batch's row axis, the one split over devices: 0 for ``[B, ...]`` batches, 1 for
        batches stacked over independent runs (``[M, B, ...]``, see :mod:`cascade_jax.difficulty`). Place such
        batches with ``shard_batch(batch, batch_axis)`` too. ``compiler_options`` go to ``jax.jit`` (shard_map
        only; ``jax.pmap`` takes none).
        """
        donate = (0,) if donate_state else ()
        if self.backend == "pmap":
            # Every device of the mesh, in every process: pmap then feeds each process its local devices and its
            # collectives span all of them (with only the local ones, each process would average on its own).
            return jax.pmap(step, axis_name=AXIS, donate_argnums=donate, devices=list(self.mesh.devices.flat))
        mapped = jax.shard_map(
            step,
            mesh=self.mesh,
            in_specs=(P(), P(*(None,) * batch_axis, AXIS)) + (P(),) * num_extra,
            out_specs=(P(), P()),
            # Without this, shard_map's replication typing makes the gradient of a replicated input already
            # summed over devices, and the step's pmean would leave it n times too large. Off, each device
            # differentiates its own copy exactly as under pmap, and the same step code is right for both.
            check_vma=False,
        )
        return jax.jit(mapped, donate_argnums=donate, compiler_options=compiler_options or None)

    def replicate(self, tree: Any, *, donated: bool = False) -> Any:
        """Place a pytree (host arrays, or device arrays) as the step's replicated input.

        ``donated=True`` for an input the step donates (a training state): every leaf then gets a buffer the step
        can write its output into. On CPU, JAX places an aligned host array (e.g. the read-only views
        ``jax.device_get`` returns) without copying it, and a step cannot reuse such a buffer: its first call would
        allocate and copy a second state (1.5 GB and 3.7 s more for 8 stacked minilm-l3 members on a 2-core CPU,
        docs/bench_difficulty.md). So on CPU a donated tree's host leaves are copied once on the device here; an
        input that is only read (parameters to predict with, a teacher) is placed without that copy. A device array
        already placed this way keeps its buffer, re-wrapped in the step's own sharding."""
        if self.backend == "pmap":
            devices = self._local_devices
            sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))
            return jax.tree_util.tree_map(
                lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)), sharding), tree
            )
        sharding = NamedSharding(self.mesh, P())

        leaves, treedef = jax.tree_util.tree_flatten(tree)
        host = []
        for i, x in enumerate(leaves):
            if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
                # The same buffer under the step's own sharding: an equivalent but different one (a single
                # device's) would make the step compile again once its outputs come back in this one.
                leaves[i] = jax.device_put(x, sharding)
            else:
                host.append(i)
        copies = [jax.device_put(np.asarray(leaves[i]), sharding) for i in host]
        if donated and copies and self.platform == "cpu":  # Accelerators copy anyway.
            copies = _owned_copies(copies)
        for i, x in zip(host, copies):
            leaves[i] = x
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def unreplicate(self, tree: Any) -> Any:
        """A host (numpy) copy of a replicated output."""
        if self.backend == "pmap":
            return jax.tree_util.tree_map(lambda x: np.asarray(x[0]), jax.device_get(tree))
        return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)

    def shard_batch(self, local_batch: dict[str, np.ndarray], batch_axis: int = 0) -> Any:
        """Place this process's rows of a global batch (``[B / processes, ...]`` numpy) for the step.

        The rows lie along ``batch_axis`` (see :meth:`map_step`); under pmap the device axis goes in front.
        """
        if self.backend == "pmap":
            n = len(self._local_devices)
            size = next(iter(local_batch.values())).shape[batch_axis]
            if size % n:
                raise ValueError(f"a host batch of {size} rows cannot be split over {n} local devices")

            def split(v):
                v = v.reshape(*v.shape[:batch_axis], n, size // n, *v.shape[batch_axis + 1:])
                return np.moveaxis(v, batch_axis, 0)

            return {k: split(v) for k, v in local_batch.items()}
        sharding = NamedSharding(self.mesh, P(*(None,) * batch_axis, AXIS))
        return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


@jax.jit
def _owned_copies(arrays: list) -> list:
    """Copies of placed arrays in buffers of XLA's own (see :meth:`DataParallel.replicate`)."""
    return [jnp.copy(x) for x in arrays]


def pmean(tree: Any) -> Any:
    """Average a pytree over the data axis (inside a mapped step)."""
    return jax.lax.pmean(tree, AXIS)


def psum(tree: Any) -> Any:
    return jax.lax.psum(tree, AXIS)


def axis_index() -> jax.Array:
    return jax.lax.axis_index(AXIS)


def axis_size() -> int:
    return jax.lax.psum(1, AXIS)
