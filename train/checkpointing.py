"""orbax checkpoints of the training state and the data iterator's position.

All orbax calls of the program live here. A checkpoint holds two items: "state" (the
`TrainState` pytree: step, parameters, BatchNorm statistics, optimizer state, RNG key data)
and "data" (the grain iterator's position, one file per process).
"""

import os

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores `TrainState` + data-iterator position under one directory."""

    def __init__(self, directory: str | os.PathLike, *, keep: int, save_every_steps: int):
        """Opens (or creates) the checkpoint directory.

        Args:
          directory: where step folders are written.
          keep: how many recent checkpoints to keep.
          save_every_steps: `maybe_save` saves at multiples of this.
        """
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=max(save_every_steps, 1), create=True
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state, iterator, *, force: bool = False) -> bool:
        """Saves at `step` if due (or always with `force`); returns whether it saved."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)
        )
        return self.manager.save(step, args=args, force=force)

    def restore(self, state_template, iterator, step: int | None = None):
        """Restores the state (shaped and sharded like `state_template`) and the iterator.

        Args:
          state_template: a `TrainState` (arrays or `jax.ShapeDtypeStruct`s with shardings).
          iterator: the grain iterator to move to the saved position (None: leave it).
          step: which step (default: latest).

        Returns:
          The restored `TrainState`.
        """
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def wait(self) -> None:
        """Blocks until asynchronous saves have finished."""
        self.manager.wait_until_finished()

    def reached_preemption(self, step: int) -> bool:
        """Whether the cluster asked all processes to stop (multi-host SIGTERM sync point)."""
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        """Finishes pending saves and releases resources."""
        self.manager.wait_until_finished()
        self.manager.close()


def restore_params_only(directory: str | os.PathLike, state_template, step: int | None = None):
    """Restores a `TrainState` from another run's checkpoint folder, without its data position.

    Args:
      directory: the other run's checkpoint directory (`<workdir>/checkpoints`).
      state_template: `TrainState` to restore into (shapes, dtypes, shardings).
      step: which step (default: latest).

    Returns:
      The restored `TrainState`.
    """
    manager = ocp.CheckpointManager(
        os.path.abspath(os.fspath(directory)),
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={"state": ocp.StandardCheckpointHandler()},
    )
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(
            f"config.resume={os.fspath(directory)!r} holds no checkpoint; point it at a run's "
            "'checkpoints' folder."
        )
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )
    manager.close()
    return restored["state"]


def load_run(workdir: str | os.PathLike, step: int | None = None):
    """A finished (or running) run's model, ready for evaluation.

    Args:
      workdir: the run's folder (holding config.json, classes.json and checkpoints/).
      step: which checkpoint (default: latest).

    Returns:
      (model in evaluation mode, config, class names).

    Raises:
      FileNotFoundError: the folder is not a run's workdir, or holds no checkpoint.
      ValueError: the checkpoint does not fit the model its config describes.
    """
    import json

    from flax import nnx

    from train import models, steps

    workdir = os.path.abspath(os.fspath(workdir))
    config_path = os.path.join(workdir, "config.json")
    classes_path = os.path.join(workdir, "classes.json")
    for path in (config_path, classes_path):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} does not exist: --workdir must be a folder written by train/main.py."
            )
    from train.configs import default

    # Keys added since the run was made take their defaults.
    config = default.get_config()
    with open(config_path) as f:
        _merge(config, json.load(f))
    with open(classes_path) as f:
        class_names = json.load(f)
    model = models.create_model(config, len(class_names), seed=config.seed)
    graphdef, state = steps.initial_state(model, steps.create_optimizer(config), config.seed)
    try:
        state = restore_params_only(os.path.join(workdir, "checkpoints"), state, step)
    except FileNotFoundError:
        raise
    except Exception as e:  # orbax reports shape / structure mismatches in many ways
        raise ValueError(
            f"the checkpoint in {workdir}/checkpoints does not fit the model its config.json "
            f"describes ({config.model.selector} selector, {config.model.classifier} "
            f"classifier, {len(class_names)} classes): {type(e).__name__}: {e}"
        ) from e
    model = nnx.merge(graphdef, state.params, state.rest)
    model.eval()
    return model, config, class_names


def _merge(config, saved: dict) -> None:
    """Writes the values of a saved config (a nested dict) into `config`, key by key."""
    for key, value in saved.items():
        if isinstance(value, dict) and key in config:
            _merge(config[key], value)
        else:
            with config.unlocked():
                config[key] = tuple(value) if isinstance(value, list) else value
