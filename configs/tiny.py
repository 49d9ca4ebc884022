"""Tiny config for CPU tests: 32x32 inputs, 2 blocks of width 64."""

from avat3r_jax.config import base_config


def get_config():
    c = base_config()
    c.data.image_height = 32
    c.data.image_width = 32
    c.data.num_input_views = 2
    c.data.num_target_views = 2
    c.data.feature_height = 8
    c.data.feature_width = 8
    c.data.expression_dim = 8
    c.data.batch_size = 2
    c.data.synthetic.subjects = 4
    c.data.synthetic.frames = 3
    c.data.synthetic.cameras = 4
    c.data.synthetic.resolution = 32
    c.data.synthetic.val_subjects = 1
    c.data.synthetic.test_subjects = 1
    c.model.patch_size = 8
    c.model.width = 64
    c.model.depth = 2
    c.model.num_heads = 4
    c.model.head_channels = 16
    c.render.backend = "reference"
    c.train.num_steps = 20
    c.train.warmup_steps = 2
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.eval_batches = 1
    c.train.checkpoint_every = 10
    return c
