"""Export a training run to an inference bundle.

``avat3r-export --workdir=runs/synthetic --out=bundles/synthetic`` (or ``python -m launch.export ...``)
reads the newest (or ``--step``) Orbax checkpoint of the run and writes the bundle described in
``avat3r_jax/export/bundle.py``: params (``--param_dtype=bfloat16`` halves them), the config, a
manifest with checksums, and ``jax.export`` artifacts of forward/encode/decode for ``--platforms``.
``--to_pytorch`` (or ``--to-pytorch``) also writes ``<out>/pytorch/model.safetensors`` (PyTorch names and layouts) for
``avat3r_jax.torch``. A config with ``model.attention_impl=cudnn`` exports only on a GPU host (cuDNN
lowering needs the library); elsewhere pass ``--attention_impl=xla``.
"""

from __future__ import annotations

import pathlib

from absl import app, flags, logging

WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory (holds checkpoints/).", required=True)
OUT = flags.DEFINE_string("out", None, "Bundle directory to write.", required=True)
STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the newest).")
PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"], "dtype of the stored parameters.")
PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda"], "Platforms the jax.export artifacts are lowered for.")
NO_JAX_EXPORT = flags.DEFINE_bool("no_jax_export", False, "Skip the jax.export artifacts (params, config and manifest only).")
ATTENTION_IMPL = flags.DEFINE_enum("attention_impl", None, ["xla", "cudnn", "pallas_tpu"], "Attention used by the exported functions.")
TO_PYTORCH = flags.DEFINE_bool("to_pytorch", False, "Also write <out>/pytorch/model.safetensors with PyTorch names and layouts.")
flags.DEFINE_alias("to-pytorch", "to_pytorch")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")
    from avat3r_jax.checkpoint import CheckpointError
    from avat3r_jax.export.bundle import save_bundle
    from avat3r_jax.export.exporting import export_model
    from avat3r_jax.export.from_checkpoint import load_checkpoint_params
    from avat3r_jax.export.params import cast_params
    from avat3r_jax.export.runtime import with_runtime_overrides

    if not flags.FLAGS["verbosity"].present:  # JAX/Orbax INFO logs only on request
        logging.set_verbosity(logging.WARNING)
    try:
        config, params, step = load_checkpoint_params(WORKDIR.value, STEP.value)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from error
    out = pathlib.Path(OUT.value)
    stored = cast_params(params, PARAM_DTYPE.value)
    exports = {}
    if not NO_JAX_EXPORT.value:
        export_config = with_runtime_overrides(config, model_attention_impl=ATTENTION_IMPL.value)
        try:
            exports = export_model(export_config, stored, PLATFORMS.value)
        except RuntimeError as error:
            raise SystemExit(
                f"error: jax.export for {PLATFORMS.value} with model.attention_impl={export_config.model.attention_impl} failed: {error}\n"
                "pass --attention_impl=xla (portable), --platforms for this host's platform, or --no_jax_export"
            ) from error
    manifest = save_bundle(out, config, stored, exports, source={"workdir": str(pathlib.Path(WORKDIR.value).absolute()), "step": step})
    count, names = manifest["params"]["count"], ", ".join(sorted(exports)) or "none"
    print(f"wrote bundle {out.absolute()}: checkpoint step {step}, {count} parameters ({PARAM_DTYPE.value}), jax.export: {names}")
    if TO_PYTORCH.value:
        from avat3r_jax.export.to_pytorch import write_pytorch

        path = write_pytorch(out / "pytorch", config, params)
        print(f"wrote PyTorch weights {path}")


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
