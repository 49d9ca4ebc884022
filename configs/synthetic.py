"""The default job: train on the embedded procedural head dataset (CPU or one GPU)."""

from avat3r_jax.config import base_config


def get_config():
    c = base_config()
    c.data.image_height = 64
    c.data.image_width = 64
    c.data.num_input_views = 4
    c.data.num_target_views = 2
    c.data.batch_size = 4
    c.data.synthetic.subjects = 24
    c.data.synthetic.frames = 8
    c.data.synthetic.cameras = 8
    c.data.synthetic.resolution = 64
    c.model.patch_size = 8
    c.model.width = 256
    c.model.depth = 6
    c.model.num_heads = 8
    c.model.head_channels = 32
    # About 4 (Gaussian, tile) pairs per Gaussian of a view; masked background Gaussians take none.
    # Bounds the xla backend's memory on CPU; overflow would show in train/dropped_intersections.
    c.render.max_intersections = 65536
    c.train.num_steps = 3000
    c.train.learning_rate = 3e-4
    c.train.warmup_steps = 200
    return c
