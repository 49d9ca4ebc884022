"""``avat3r-prepare``: 1 to 4 photos of a head -> the input directory ``avat3r-infer`` reads.

    avat3r-prepare --photos=my_photos --out=my_head --dust3r=DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth \\
        --sapiens=sapiens_2b_epoch_660.pth --feature_projection=DATASET/feature_projection.npz \\
        [--cameras=cameras.json] [--config=configs/paper.py]

Every image file in ``--photos`` is a view (EXIF orientation applied; an alpha channel becomes the
mask). DUSt3R gives point maps and, by global alignment, cameras (or ``--cameras`` gives them: a
JSON object ``{"<photo file>": {"K": 3x3 in that photo's pixels, "world_to_cam": 4x4 OpenCV}}``);
cameras and points are brought into the training head frame; each photo is cropped around the head
at the model's size (``data.image_height/width`` of ``--config``); Sapiens features go through the
dataset's ``FeatureProjection`` (``--feature_projection``; without it one is fitted on the photos,
with a warning). ``--out`` gets ``inputs.json`` with the images, masks, cameras, position maps,
validity and features (format: ``avat3r_jax/export/inputs.py``), ``contact_sheet.png`` (crop |
confidence | depth | feature PCA per view) and ``prepare.json`` (head-frame residual, provenance).
The directory is built beside ``--out`` and renamed into place when complete; an existing non-empty
``--out`` is refused.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import uuid

import numpy as np
from absl import flags

from avat3r_jax.frontend.models import DUST3R_SIZES, SAPIENS_SIZES, load_frontend
from configs import paper as paper_config
from launch import config_cli

PHOTOS = flags.DEFINE_string("photos", None, "Directory with 1 to 4 photos of the head.", required=True)
OUT = flags.DEFINE_string("out", None, "Input directory to create (must not exist or be empty).", required=True)
DUST3R = flags.DEFINE_string("dust3r", None, "DUSt3R checkpoint (.pth or .safetensors).", required=True)
SAPIENS = flags.DEFINE_string("sapiens", None, "Sapiens pretrain checkpoint (.pth or .safetensors).", required=True)
CAMERAS = flags.DEFINE_string("cameras", None, "JSON of known cameras per photo file (skips DUSt3R's pose estimate).")
FEATURE_PROJECTION = flags.DEFINE_string("feature_projection", None, "feature_projection.npz of the training dataset.")
DUST3R_SETTINGS = flags.DEFINE_enum("dust3r_settings", "checkpoint", list(DUST3R_SIZES), "DUSt3R size: the checkpoint's, or tiny (tests).")
SAPIENS_SIZE = flags.DEFINE_enum("sapiens_size", "checkpoint", list(SAPIENS_SIZES), "Sapiens size (checkpoint: from its shapes).")
DUST3R_LONG_SIDE = flags.DEFINE_integer("dust3r_long_side", 512, "DUSt3R's input long side (the released model: 512).")
SAPIENS_LONG_SIDE = flags.DEFINE_integer("sapiens_long_side", 1024, "Sapiens' input long side (pretraining: 1024).")
ITERATIONS = flags.DEFINE_integer("alignment_iterations", 300, "Adam steps of the global alignment.")


def read_cameras(path: pathlib.Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``K [V, 3, 3]``, ``world_to_cam [V, 4, 4]`` of the photos ``names`` from a cameras JSON file."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--cameras: cannot read {path} as JSON ({error})") from error
    missing = [name for name in names if not isinstance(spec, dict) or name not in spec]
    if missing:
        raise ValueError(f"--cameras: {path} has no camera for {', '.join(missing)} (keys must be the photo file names)")
    K, world_to_cam = [], []
    for name in names:
        try:
            k, w = np.asarray(spec[name]["K"], np.float64), np.asarray(spec[name]["world_to_cam"], np.float64)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"--cameras: {name} needs numeric 'K' (3x3) and 'world_to_cam' (4x4) ({error})") from error
        if k.shape != (3, 3) or w.shape != (4, 4) or not (np.isfinite(k).all() and np.isfinite(w).all()):
            raise ValueError(f"--cameras: {name} needs finite 'K' (3x3) and 'world_to_cam' (4x4), got shapes {k.shape} and {w.shape}")
        K.append(k)
        world_to_cam.append(w)
    return np.stack(K), np.stack(world_to_cam)


def _check_out(out: pathlib.Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty directory; choose another (nothing was written)")


def _load_models():
    return load_frontend(DUST3R.value, SAPIENS.value, dust3r_size=DUST3R_SETTINGS.value, sapiens_size=SAPIENS_SIZE.value)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")
    from avat3r_jax.export.inputs import write_inputs
    from avat3r_jax.frontend import alignment, checkpoints, contact_sheet, features, photos, prepare
    from data_pipelines import image_codec

    out = pathlib.Path(OUT.value)
    building = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _check_out(out)
        config = config_cli.CONFIG.value if config_cli.CONFIG.value is not None else paper_config.get_config()
        d = config.data
        photo_list = photos.read_photos(PHOTOS.value)
        names = [p.name for p in photo_list]
        print(f"photos: {len(photo_list)} ({', '.join(f'{p.name} {p.size[1]}x{p.size[0]}' for p in photo_list)})")
        cameras = None
        if CAMERAS.value:
            cameras = prepare.Cameras(*read_cameras(pathlib.Path(CAMERAS.value), names))
        projection = features.FeatureProjection.load(FEATURE_PROJECTION.value) if FEATURE_PROJECTION.value else None
        print("loading DUSt3R and Sapiens")
        dust3r_model, sapiens_model = _load_models()
        settings = prepare.PrepareSettings(
            image_height=d.image_height,
            image_width=d.image_width,
            feature_height=d.feature_height,
            feature_width=d.feature_width,
            feature_channels=d.feature_channels,
            dust3r_long_side=DUST3R_LONG_SIDE.value,
            sapiens_long_side=SAPIENS_LONG_SIDE.value,
            alignment=alignment.AlignmentSettings(iterations=ITERATIONS.value),
        )
        views = prepare.prepare_views(photo_list, dust3r_model, sapiens_model, settings, cameras=cameras, projection=projection)
        building.mkdir(parents=True)
        write_inputs(building, views.example())
        sheet = contact_sheet.contact_sheet(
            views.images, views.confidence, views.posmap_valid[..., 0] > 0.5, views.posmaps, views.world_to_cam, views.features
        )
        (building / "contact_sheet.png").write_bytes(image_codec.encode_png(sheet))
        summary = {
            "photos": names,
            "cameras": "given (--cameras)" if cameras is not None else "DUSt3R global alignment",
            "head_frame": {
                "centre_from": views.frame.centre_from,
                "residual": views.frame.residual.summary(),
                "scale": views.frame.transform.scale,
            },
            "feature_projection": {
                "file": FEATURE_PROJECTION.value,
                "fitted_on_these_photos": views.projection_fitted_here,
                "provenance": dict(views.projection.provenance),
            },
        }
        (building / "prepare.json").write_text(json.dumps(summary, indent=1))
        _check_out(out)
        if out.exists():
            out.rmdir()
        building.rename(out)
    except (photos.PhotoError, prepare.PrepareError, checkpoints.CheckpointError, ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from error
    finally:
        shutil.rmtree(building, ignore_errors=True)
    print(f"wrote {out}: {len(photo_list)} views at {d.image_height}x{d.image_width}, contact_sheet.png; next: avat3r-infer --inputs={out}")


def run() -> None:
    config_cli.run_app(main)


if __name__ == "__main__":
    run()
