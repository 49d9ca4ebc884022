"""Contact sheet of the procedural heads without and with the config's variety.

    python -m launch.synthetic_sheet --config=configs/synthetic_varied.py --out=docs/results/synthetic_variety.jpg

Rows in groups of three: front views with the variety off, then the same subjects' front and
three-quarter views with the config's ``data.synthetic`` variety (hair styles, dyed hair, glasses,
head shapes, beards, lighting). JPEG or PNG by the file name.
"""

from __future__ import annotations

import pathlib

from absl import flags
from PIL import Image

from data_pipelines.synthetic import dataset, sheet
from launch.config_cli import CONFIG, run_app

OUT = flags.DEFINE_string("out", "synthetic_variety.jpg", "Image file to write (.jpg or .png).")
SUBJECTS = flags.DEFINE_integer("subjects", 16, "Subjects shown (the first ones of the config's seed).")
SIZE = flags.DEFINE_integer("size", 96, "Pixels per view.")


def main(argv: list[str]) -> None:
    del argv
    if CONFIG.value is None:
        raise SystemExit("error: --config=configs/X.py is required")
    spec = dataset.SyntheticSpec.from_config(CONFIG.value.data)
    pixels = sheet.variety_sheet(spec, SUBJECTS.value, SIZE.value)
    out = pathlib.Path(OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 88} if out.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(pixels).save(out, **options)
    print(f"wrote {out} ({pixels.shape[1]}x{pixels.shape[0]}, {SUBJECTS.value} subjects)")


if __name__ == "__main__":
    run_app(main)
