"""Custom kernels kept sharded over the batch under `jit` on several devices.

XLA's SPMD partitioner cannot split a kernel's custom call (a Pallas kernel): sharded over
devices along the batch, as the training step's data axis is, it would gather the whole batch
onto every device and run the kernel there. `batch_partitioned` tells it how the kernel
splits instead (`jax.experimental.custom_partitioning`): each device runs the kernel on its
own share of the batch, the other arguments (weights) replicated.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import custom_batching, lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec


def batch_partitioned(
    kernel: Callable,
    *,
    num_arrays: int,
    num_static: int,
    num_batched: int = 1,
    sharding_rule: str,
    replicated: Sequence[str],
) -> Callable:
    """`kernel(x, *others, *static)`, split over devices along x's leading (batch) axis.

    Args:
      kernel: a function of `num_arrays` array (or pytree-of-arrays) arguments, x first, then
        hashable static arguments; every output's leading axis is x's batch axis.
      num_arrays: how many leading arguments are arrays (or pytrees of arrays).
      num_static: how many static arguments follow them.
      num_batched: how many of the arrays, from the first, share x's batch axis (sharded with
        it; plain arrays, not pytrees); the others are replicated.
      sharding_rule: Shardy's einsum-like rule over the flattened arrays, the batch factor
        first in x and in every output (e.g. "b h w c, b h w -> b k l").
      replicated: the rule's factors that must not be sharded (all but the batch).

    Returns:
      A function with `kernel`'s signature and values: under `jit` with x sharded along its
      first axis, every output is sharded the same way along its first axis, each device
      running `kernel` on its share (of the first `num_batched` arrays); the other arrays are
      replicated (gathered if sharded).
    """
    static_argnums = tuple(range(num_arrays, num_arrays + num_static))
    wrapped = custom_partitioning(kernel, static_argnums=static_argnums)

    def batch_sharding(mesh, arg_shapes) -> NamedSharding:
        sharding = arg_shapes[0].sharding
        spec = sharding.spec if isinstance(sharding, NamedSharding) else PartitionSpec()
        return NamedSharding(mesh, PartitionSpec(spec[0] if len(spec) else None))

    def infer(*args):
        *_, mesh, arg_shapes, result_shape = args
        batch = batch_sharding(mesh, arg_shapes)
        return jax.tree.map(lambda _: batch, result_shape)

    def partition(*args):
        *static, mesh, arg_shapes, result_shape = args
        batch = batch_sharding(mesh, arg_shapes)
        whole = NamedSharding(mesh, PartitionSpec())
        arrays = (batch,) * num_batched + jax.tree.map(
            lambda _: whole, tuple(arg_shapes[num_batched:])
        )
        outputs = jax.tree.map(lambda _: batch, result_shape)
        return mesh, lambda *arrays: kernel(*arrays, *static), outputs, arrays

    wrapped.def_partition(
        partition=partition,
        infer_sharding_from_operands=infer,
        sharding_rule=sharding_rule,
        need_replication_factors=tuple(replicated),
    )

    def call(*args):
        arrays, static = args[:num_arrays], args[num_arrays:]

        # `custom_partitioning` has no batching rule of its own; under `vmap` the mapped axis
        # joins the batch axis (the kernel's images are independent), or, if a replicated
        # argument is mapped, the kernel runs once per mapped index.
        @custom_batching.custom_vmap
        def run(*arrays):
            return wrapped(*arrays, *static)

        @run.def_vmap
        def _vmap(axis_size, in_batched, *arrays):
            def mapped(a, batched):
                return a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))

            arrays = jax.tree.map(mapped, arrays, tuple(in_batched))
            if any(jax.tree.leaves(tuple(in_batched[num_batched:]))):
                out = lax.map(lambda a: run(*a), arrays)
            else:
                joined = [a.reshape(-1, *a.shape[2:]) for a in arrays[:num_batched]]
                out = run(*joined, *(jax.tree.map(lambda a: a[0], arrays[num_batched:])))
                out = jax.tree.map(lambda o: o.reshape(axis_size, -1, *o.shape[1:]), out)
            return out, jax.tree.map(lambda _: True, out)

        return run(*arrays)

    return call
