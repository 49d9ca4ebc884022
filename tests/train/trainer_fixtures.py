"""Shared pieces of the trainer tests: the tiny config, its dataset, and reading logged losses."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import ml_collections

from avat3r_jax.train.trainer import Trainer
from configs import tiny
from launch.train_data import grain_iterators

REPO = pathlib.Path(__file__).resolve().parents[2]
NEVER_REACHED = 1e6  # seconds of time budget (11.6 days): the tiny runs' full schedules always fit


def tiny_train_config(data_dir: pathlib.Path, **train_overrides) -> ml_collections.ConfigDict:
    """The tiny config at batch 4 (divisible by data x fsdp = 4), logging every step, no eval.

    The learning rate is high enough for a 12-step overfit to show; every test shares it so the
    compiled train step is reused from the persistent compilation cache. ``train.time_budget`` is on
    (``NEVER_REACHED`` unless overridden): the optimiser then keeps its schedule's horizon in its
    state, so a budgeted run's step program is every other test's (``Trainer`` itself ignores the
    budget; ``launch.train`` trains within it, and plans the configured schedule, which fits).
    """
    config = tiny.get_config()
    config.data.dir = str(data_dir)
    config.data.batch_size = 4
    config.render.backend = "xla"
    config.train.log_every = 1
    config.train.eval_every = 0
    config.train.checkpoint_every = 0
    config.train.random_background = False
    config.train.learning_rate = 2e-3
    config.train.warmup_steps = 1
    config.train.time_budget = NEVER_REACHED
    for key, value in train_overrides.items():
        config.train[key] = value
    return config


def make_trainer(config: ml_collections.ConfigDict, workdir: pathlib.Path, num_devices: int = 1) -> Trainer:
    """A ``Trainer`` on the first ``num_devices`` devices, reading ``config.data.dir`` through the Grain pipeline."""
    return Trainer(config, workdir, grain_iterators(config, pathlib.Path(config.data.dir)), devices=jax.devices()[:num_devices])


def logged_losses(workdir: pathlib.Path) -> dict[int, float]:
    """Step -> training loss from ``metrics.jsonl`` (the last record of a step wins, as after a resume)."""
    losses = {}
    path = pathlib.Path(workdir) / "metrics.jsonl"
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            losses[record["step"]] = record["train/loss"]
    return losses


def config_flags_for(config: ml_collections.ConfigDict) -> list[str]:
    """``--config.*`` overrides reproducing the fields of ``config`` that differ from configs/tiny.py."""
    base = tiny.get_config().to_dict()
    flags = []

    def walk(prefix, ours, theirs):
        for key, value in ours.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value, theirs[key])
            elif value != theirs[key]:
                flags.append(f"--config.{prefix}{key}={value}")

    walk("", config.to_dict(), base)
    return flags


def train_command(config: ml_collections.ConfigDict, workdir: pathlib.Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "launch.train", "--config=configs/tiny.py", f"--workdir={workdir}", *config_flags_for(config), *extra]


def subprocess_env(device_count: int = 1) -> dict[str, str]:
    """This process's environment with ``device_count`` simulated CPU devices and its other XLA flags
    (the persistent cache key holds them: a child of this process's device count loads its programs)."""
    env = dict(os.environ)
    others = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).split()
    env["XLA_FLAGS"] = " ".join([*others, f"--xla_force_host_platform_device_count={device_count}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_training(config, workdir, *extra, device_count: int = 1, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        train_command(config, workdir, *extra),
        cwd=REPO,
        env=env or subprocess_env(device_count),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
