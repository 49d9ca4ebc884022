"""``avat3r-data``: generate the synthetic head dataset, convert real layouts, build TFDS, inspect.

    avat3r-data synthetic --out DIR --subjects N --frames F --cameras C --resolution R
    avat3r-data convert --layout ava256|nersemble --src DIR --out DIR [--expression-dim D] [--expression-basis NPZ]
    avat3r-data tfds --src DIR --out TFDS_DIR
    avat3r-data inspect DIR [--sheet contact_sheet.png] [--split train] [--verify]
    avat3r-data annotate --dataset DIR --dust3r CKPT --sapiens CKPT [--out DIR]   (launch/annotate.py)

Defaults of ``synthetic`` come from configs/synthetic.py.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

from avat3r_jax.config import base_config
from configs import synthetic as synthetic_config
from data_pipelines import image_codec, inspection, real, sources, storage, synthetic
from launch import annotate as annotate_command


def _add_split_args(parser: argparse.ArgumentParser, val: int, test: int, heldout: int) -> None:
    parser.add_argument("--val-subjects", type=int, default=val, help="held-out identities (split val_subjects)")
    parser.add_argument("--test-subjects", type=int, default=test, help="held-out identities (split test)")
    parser.add_argument("--heldout-frames", type=int, default=heldout, help="last frames of training subjects (split val_expressions)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avat3r-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    d = synthetic_config.get_config().data
    s = d.synthetic
    gen = commands.add_parser("synthetic", help="render the procedural multi-view head dataset")
    gen.add_argument("--out", required=True, type=pathlib.Path)
    gen.add_argument("--subjects", type=int, default=s.subjects)
    gen.add_argument("--frames", type=int, default=s.frames, help="frames per subject (one smooth expression video)")
    gen.add_argument("--cameras", type=int, default=s.cameras)
    gen.add_argument("--resolution", type=int, default=s.resolution)
    gen.add_argument("--expression-dim", type=int, default=d.expression_dim)
    gen.add_argument("--feature-channels", type=int, default=d.feature_channels)
    gen.add_argument("--feature-size", type=int, nargs=2, default=(d.feature_height, d.feature_width), metavar=("H", "W"))
    gen.add_argument("--posmap-noise", type=float, default=s.posmap_noise, help="std (metres) of structured depth error")
    gen.add_argument("--distance-jitter", type=float, default=s.distance_jitter)
    gen.add_argument("--focal-jitter", type=float, default=s.focal_jitter)
    gen.add_argument("--render-steps", type=int, default=s.render_steps)
    for name, meaning in (
        ("beard_prob", "P(chin beard)"),
        ("lighting_jitter", "per-subject lighting"),
        ("hair_style_prob", "P(a hair style other than the cap)"),
        ("dyed_hair_prob", "P(dyed hair)"),
        ("glasses_prob", "P(glasses)"),
        ("head_shape_jitter", "head shape variation"),
        ("expression_cycles", "speed of the expression videos"),
    ):
        gen.add_argument(f"--{name.replace('_', '-')}", type=float, default=s[name], help=f"{meaning} (data.synthetic.{name})")
    gen.add_argument("--batch", type=int, default=None, help="frames per device call (default: about 2^18 rays)")
    gen.add_argument("--seed", type=int, default=s.seed)
    gen.add_argument("--overwrite", action="store_true")
    _add_split_args(gen, s.val_subjects, s.test_subjects, s.heldout_frames)

    conv = commands.add_parser("convert", help="convert an Ava-256 or NeRSemble tree into records")
    conv.add_argument("--layout", required=True, choices=sorted(real.CONVERTERS))
    conv.add_argument("--src", required=True, type=pathlib.Path)
    conv.add_argument("--out", required=True, type=pathlib.Path)
    conv.add_argument("--frame-stride", type=int, default=1)
    conv.add_argument("--max-frames", type=int, default=None, help="per subject")
    conv.add_argument("--scale", type=float, default=None, help="world units -> metres (default: 0.001 ava256, 1 nersemble)")
    conv.add_argument(
        "--expression-keys", default=",".join(real.nersemble.EXPRESSION_KEYS), help="nersemble: FLAME tracking arrays forming the code"
    )
    conv.add_argument("--expression-dim", type=int, default=d.expression_dim, help="ava256: components of the mesh expression basis")
    conv.add_argument(
        "--expression-basis", type=pathlib.Path, default=None, help="ava256: reuse this expression_basis.npz (held-out subjects)"
    )
    _add_split_args(conv, 0, 0, 0)

    build = commands.add_parser("tfds", help="prepare a TFDS (array_record) dataset from a records directory")
    build.add_argument("--src", required=True, type=pathlib.Path)
    build.add_argument("--out", required=True, type=pathlib.Path, help="TFDS data_dir")

    look = commands.add_parser("inspect", help="counts per split and a contact sheet of one example")
    look.add_argument("dir", type=pathlib.Path)
    look.add_argument("--sheet", type=pathlib.Path, default=pathlib.Path("contact_sheet.png"))
    look.add_argument("--split", default="train", choices=sorted(inspection.grain_pipeline.SPLITS))
    look.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"), help="crop/resize of the sheet's views")
    look.add_argument("--verify", action="store_true", help="decode every record")

    note = commands.add_parser("annotate", help="add DUSt3R position maps and Sapiens feature maps to every record")
    annotate_command.add_arguments(note)
    return parser


def _synthetic(args: argparse.Namespace) -> None:
    spec = synthetic.SyntheticSpec(
        subjects=args.subjects,
        frames=args.frames,
        cameras=args.cameras,
        resolution=args.resolution,
        expression_dim=args.expression_dim,
        feature_channels=args.feature_channels,
        feature_height=args.feature_size[0],
        feature_width=args.feature_size[1],
        posmap_noise=args.posmap_noise,
        distance_jitter=args.distance_jitter,
        focal_jitter=args.focal_jitter,
        val_subjects=args.val_subjects,
        test_subjects=args.test_subjects,
        heldout_frames=args.heldout_frames,
        render_steps=args.render_steps,
        seed=args.seed,
        beard_prob=args.beard_prob,
        lighting_jitter=args.lighting_jitter,
        hair_style_prob=args.hair_style_prob,
        dyed_hair_prob=args.dyed_hair_prob,
        glasses_prob=args.glasses_prob,
        head_shape_jitter=args.head_shape_jitter,
        expression_cycles=args.expression_cycles,
    )
    synthetic.generate(spec, args.out, overwrite=args.overwrite, batch=args.batch)
    print(inspection.summary(args.out))


def _convert(args: argparse.Namespace) -> None:
    options = {
        "val_subjects": args.val_subjects,
        "test_subjects": args.test_subjects,
        "heldout_frames": args.heldout_frames,
        "frame_stride": args.frame_stride,
        "max_frames": args.max_frames,
    }
    if args.scale is not None:
        options["scale"] = args.scale
    if args.layout == "nersemble":
        options["expression_keys"] = tuple(args.expression_keys.split(","))
    else:
        options.update(expression_dim=args.expression_dim, basis_path=args.expression_basis)
    try:
        info = real.CONVERTERS[args.layout](args.src, args.out, **options)
    except (real.ConversionError, storage.DatasetError) as e:  # one line naming the file; nothing was published.
        raise SystemExit(f"avat3r-data convert: {e}") from e
    print(real.format_layouts(info))
    print(inspection.summary(args.out))
    print(f"contact sheet (head-pose axes over every view of the first frame): {args.out / real.SHEET_FILE}")


def _inspect(args: argparse.Namespace) -> None:
    if args.verify:
        sources.verify(args.dir, read_all=True)
        print("all records decode")
    print(inspection.summary(args.dir))
    example = inspection.sample_example(args.dir, args.split, tuple(args.size), base_config().data)
    args.sheet.write_bytes(image_codec.encode_png(inspection.contact_sheet(example)))
    print(f"contact sheet of subject {int(example['subject'])} frame {int(example['frame'])} ({args.split}): {args.sheet}")


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "synthetic":
        _synthetic(args)
    elif args.command == "convert":
        _convert(args)
    elif args.command == "tfds":
        from data_pipelines import tfds_builder  # optional TFDS path.

        print(f"prepared {tfds_builder.build(args.src, args.out)}")
    elif args.command == "annotate":
        annotate_command.run_command(args)
    else:
        _inspect(args)


def run() -> None:
    """Console-script entry point."""
    main(sys.argv[1:])


if __name__ == "__main__":
    run()
