"""`train_and_evaluate(config, workdir)`: the P2P training program's loop.

One jitted step over a `Mesh` with a "data" axis (batch sharded, state replicated, buffers
donated); per-epoch temperature and λ₁ schedules; evaluation every N epochs and at the end;
orbax checkpoints every N steps with automatic resume; SIGTERM saves and stops cleanly; a
non-finite loss stops the run and leaves the last good checkpoint.
"""

import functools
import json
import logging
import math
import os
import signal
import time

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from train import checkpointing, input_pipeline, models, steps
from train.metric_writer import MetricWriter


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def make_mesh() -> Mesh:
    """A 1-D mesh over all devices of all processes, axis "data".

    Auto axis: the batch arrives sharded and the state replicated, and the partitioner
    propagates through the model. Explicit mode would demand sharding annotations on the
    library's reshapes that fold the batch (the flattened-batch segment_sum, Monte-Carlo
    samples folded into the classifier batch), which the library deliberately does not know.
    """
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


class _StopSignal:
    """Records SIGTERM (preemption) so the loop can save and stop between steps."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping.")
        self.received = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)


def _check_finite(metrics: dict[str, float], step: int, checkpoint_dir: str) -> None:
    if not math.isfinite(metrics["loss"]):
        raise NonFiniteLossError(
            f"non-finite loss ({metrics['loss']}) at step {step}; metrics: {metrics}. The last "
            f"good checkpoint is in {checkpoint_dir}. Lower config.optim.learning_rate, set "
            "config.optim.grad_clip_norm, or use config.compute_dtype='float32'."
        )


def evaluate(
    eval_fn, params, rest, data: input_pipeline.Data, mesh: Mesh, config
) -> dict[str, float]:
    """Runs `eval_fn` over the whole evaluation split and returns mean metrics."""
    totals: dict[str, float] = {}
    for local_batch in data.eval_batches(config):
        batch = input_pipeline.to_global(local_batch, mesh)
        sums = jax.device_get(eval_fn(params, rest, batch))
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return steps.summarize(totals)


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def _restore_or_init(config, ckpt, state, iterator, graphdef):
    """big_vision's order: workdir checkpoint, then config.resume, then config.model_init."""
    if ckpt.latest_step() is not None:
        logging.info("Resuming from %s step %d.", ckpt.directory, ckpt.latest_step())
        return ckpt.restore(state, iterator), "workdir"
    if config.resume:
        logging.info("Starting from the checkpoint in %s.", config.resume)
        return checkpointing.restore_params_only(config.resume, state), "resume"
    if config.model_init:
        logging.info("Initialising the model from %s.", config.model_init)
        model = nnx.merge(graphdef, state.params, state.rest)
        models.load_pretrained(model, config.model_init, config.replace_classifier_head)
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return state.replace(params=params, rest=rest), "model_init"
    return state, "scratch"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains and evaluates P2P as `config` says; everything is written under `workdir`.

    Writes `config.json`, `metrics.jsonl`, `tensorboard/`, `checkpoints/` and, at the end,
    `eval_results.json`. Resumes automatically from `workdir/checkpoints`.

    Args:
      config: a config from `train/configs/`.
      workdir: output folder (created).

    Returns:
      The final evaluation metrics (empty if the run was stopped by SIGTERM first).
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    _write_config(config, workdir)
    data = input_pipeline.create(config)
    num_classes = config.data.num_classes or data.num_classes
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "classes.json"), "w") as f:
            json.dump(data.class_names[:num_classes] or list(range(num_classes)), f)
    batch_size = config.optim.batch_size
    steps_per_epoch = config.optim.steps_per_epoch or max(data.num_train // batch_size, 1)
    total_steps = steps_per_epoch * config.optim.num_epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    settings = steps.step_settings(config, steps_per_epoch)

    mesh = make_mesh()
    if batch_size % mesh.size:
        raise ValueError(
            f"config.optim.batch_size={batch_size} must be divisible by the {mesh.size} devices."
        )
    replicated = NamedSharding(mesh, PartitionSpec())
    model = models.create_model(config, num_classes, seed=config.seed)
    optimizer = steps.create_optimizer(config, total_steps)
    graphdef, state = steps.initial_state(model, optimizer, config.seed)
    eval_def = steps.eval_graphdef(model)
    state = jax.device_put(state, replicated)

    train_iter = data.train_iterator(config, seed=config.seed)
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=config.keep_checkpoints,
        save_every_steps=config.checkpoint_every_steps,
    )
    state, origin = _restore_or_init(config, ckpt, state, train_iter, graphdef)
    state = jax.device_put(state, replicated)

    train_fn = jax.jit(
        functools.partial(
            steps.train_step, graphdef=graphdef, optimizer=optimizer, settings=settings
        ),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    eval_fn = jax.jit(
        functools.partial(steps.eval_step, graphdef=eval_def, settings=settings),
        out_shardings=replicated,
    )
    writer = MetricWriter(workdir)
    start = int(state.step)
    _say(
        f"Training from {origin} at step {start} of {total_steps} ({steps_per_epoch} steps per "
        f"epoch, batch {batch_size}, {mesh.size} devices); workdir {workdir}"
    )
    eval_every = config.eval_every_epochs * steps_per_epoch
    progress = tqdm(
        total=total_steps,
        initial=start,
        disable=not config.progress_bar or jax.process_index(),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    last_log_time, last_log_step = time.perf_counter(), start
    results: dict[str, float] = {}
    stopped = False
    # Host-to-device copies in the loop must be explicit (the batch's device_put); an implicit
    # one is a bug that stalls the accelerator every step.
    with _StopSignal() as stop, jax.transfer_guard_host_to_device("disallow"):
        for step in range(start + 1, total_steps + 1):
            batch = input_pipeline.to_global(next(train_iter), mesh)
            state, metrics = train_fn(state, batch)
            progress.update(1)
            due_checkpoint = step % config.checkpoint_every_steps == 0 or step == total_steps
            if step % config.log_every_steps == 0 or due_checkpoint or stop.received:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(values, step, ckpt.directory)
                now = time.perf_counter()
                values["images_per_second"] = (
                    (step - last_log_step) * batch_size / max(now - last_log_time, 1e-9)
                )
                last_log_time, last_log_step = now, step
                writer.write(step, values, "train")
                progress.set_postfix(
                    loss=f"{values['loss']:.3f}",
                    kept=f"{values['kept_fraction']:.2f}",
                    img_s=f"{values['images_per_second']:.0f}",
                )
            if due_checkpoint:
                ckpt.save(step, state, train_iter, force=True)
            preempted = stop.received or (jax.process_count() > 1 and ckpt.reached_preemption(step))
            if preempted:
                if not due_checkpoint:  # else this step is saved already
                    ckpt.save(step, state, train_iter, force=True)
                stopped = True
                break
            if step % eval_every == 0 or step == total_steps:
                results = evaluate(eval_fn, state.params, state.rest, data, mesh, config)
                writer.write(step, results, "eval")
                progress.write(_format_eval(step, results))
    progress.close()
    ckpt.close()
    writer.close()
    if stopped:
        _say(f"Stopped at step {int(state.step)}; rerun the same command to resume.")
        return {}
    if not results:  # resumed at the very end: evaluate what is there
        results = evaluate(eval_fn, state.params, state.rest, data, mesh, config)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "eval_results.json"), "w") as f:
            json.dump({"step": int(state.step), **results}, f, indent=2, sort_keys=True)
    return results


def _say(message: str) -> None:
    """Prints a progress message on process 0 (absl logging is kept at warnings)."""
    if jax.process_index() == 0:
        tqdm.write(message)


def _format_eval(step: int, results: dict[str, float]) -> str:
    groups = sorted({k.split("/")[0] for k in results})
    lines = [f"eval @ step {step}:"]
    for group in groups:
        parts = [
            f"{name}={results[f'{group}/{name}']:.3f}"
            for name in ("accuracy", "kept_pixels", "budget", "mask_precision")
            if f"{group}/{name}" in results
        ]
        lines.append(f"  {group:<18} " + " ".join(parts))
    return "\n".join(lines)
