"""Compile-time benchmark of the train step: tracing and lowering vs XLA compilation, and HLO size.

``python -m launch.bench_compile --config=configs/synthetic.py [--quickstart_sizing]`` builds the
trainer of the config (with ``--quickstart_sizing``, the rasterizer and batch that
``avat3r-quickstart`` picks for this machine's backend), generates the synthetic dataset under
``--workdir`` if needed, then times ``lower`` and ``compile`` of the train step separately and one
call of the compiled step. It prints the optimised module's fusion count and its widest fusion
(operand count): on XLA:CPU every fusion is its own LLVM module, so both drive the compile time.
"""

from __future__ import annotations

import pathlib
import shutil
import time

from absl import flags

from launch.config_cli import CONFIG, run_app
from launch.hlo_stats import fusion_fan_ins

WORKDIR = flags.DEFINE_string("workdir", "/tmp/avat3r_bench_compile", "Dataset and scratch run directory.")
QUICKSTART_SIZING = flags.DEFINE_bool("quickstart_sizing", False, "Size the config as avat3r-quickstart does for this backend.")
STEPS = flags.DEFINE_integer("steps", 3, "Calls of the compiled step to time after compiling.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")
    import jax

    from avat3r_jax.train.trainer import Trainer, to_global
    from launch.device_sizing import sized_for_device
    from launch.train_data import grain_iterators, prepare_dataset

    config = CONFIG.value
    if QUICKSTART_SIZING.value:
        config, reason = sized_for_device(config, jax.default_backend())
        print(f"sizing: {reason}")
    workdir = pathlib.Path(WORKDIR.value)
    data_dir = prepare_dataset(config, workdir)
    shutil.rmtree(workdir / "run", ignore_errors=True)
    started = time.perf_counter()
    trainer = Trainer(config, workdir / "run", grain_iterators(config, data_dir))
    setup = time.perf_counter() - started
    batch = to_global(next(trainer.train_iter), trainer.mesh)
    with jax.set_mesh(trainer.mesh):
        started = time.perf_counter()
        lowered = trainer._train_step.lower(trainer.state, batch, trainer.extras)
        lowering = time.perf_counter() - started
        started = time.perf_counter()
        compiled = lowered.compile()
        compiling = time.perf_counter() - started
        state, step_times = trainer.state, []
        for _ in range(STEPS.value):
            started = time.perf_counter()
            state, metrics = compiled(state, batch, trainer.extras)
            jax.block_until_ready(metrics)
            step_times.append(time.perf_counter() - started)
    fan_ins = fusion_fan_ins(compiled.as_text())
    print(f"{jax.device_count()} {jax.default_backend()} devices; trainer setup (init compiled and run) {setup:.1f} s")
    print(f"trace + lower {lowering:.1f} s, XLA compile {compiling:.1f} s")
    print(f"optimised module: {len(fan_ins)} fusions, widest {max(fan_ins, default=0)} operands")
    print("steps: " + ", ".join(f"{t:.2f} s" for t in step_times))
    trainer.close()


if __name__ == "__main__":
    run_app(main)
