"""Metrics to JSON lines and TensorBoard event files, from process 0 only."""

import json
import os
import time

import jax
from tensorboardX import SummaryWriter


class MetricWriter:
    """Writes scalar metrics to `<workdir>/metrics.jsonl` and TensorBoard events."""

    def __init__(self, workdir: str | os.PathLike):
        """Opens the writers on process 0; other processes write nothing."""
        self.active = jax.process_index() == 0
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, float], prefix: str) -> None:
        """Writes one record {"step", "time", "<prefix>/<name>": value, ...}."""
        if not self.active:
            return
        record = {"step": int(step), "time": time.time()}
        for name, value in scalars.items():
            key = f"{prefix}/{name}"
            record[key] = float(value)
            self.tensorboard.add_scalar(key, float(value), int(step))
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        """Flushes and closes the files."""
        if self.active:
            self.jsonl.close()
            self.tensorboard.close()
