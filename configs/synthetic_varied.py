"""The default job on more varied heads (issue 22): hair styles and dyed hair, glasses, head shapes,
beards and per-subject lighting, on configs/synthetic.py's sizes (a plain dataset already in data.dir
is refused by name of each differing field: ``ensure_dataset``)."""

from configs import synthetic


def get_config():
    c = synthetic.get_config()
    s = c.data.synthetic
    s.beard_prob = 0.3
    s.lighting_jitter = 0.5
    s.hair_style_prob = 0.8
    s.dyed_hair_prob = 0.15
    s.glasses_prob = 0.3
    s.head_shape_jitter = 1.0
    return c
