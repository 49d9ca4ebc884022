"""The full config schema with defaults; every experiment config (``configs/*.py``) starts from ``base_config()``.

The returned ConfigDict is locked: assigning or overriding a key that is not defined here
raises an error (a typo on the command line never silently does nothing).
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Inputs of one example: V input views and T target views at a square-or-not resolution.
    c.data = ml_collections.ConfigDict()
    c.data.dir = ""  # ArrayRecord/TFDS dataset dir; "" -> {workdir}/../data/<name> generated on demand.
    c.data.name = "synthetic_heads"
    c.data.image_height = 64
    c.data.image_width = 64
    c.data.num_input_views = 4
    c.data.num_target_views = 2
    c.data.different_frame_prob = 1.0  # P(input views come from frames other than the target's).
    c.data.feature_channels = 6  # Part-label one-hot channels of the synthetic feature maps.
    c.data.feature_height = 16
    c.data.feature_width = 16
    c.data.expression_dim = 16
    c.data.batch_size = 2
    c.data.num_workers = 0  # Grain worker processes per data-loading process (0: assemble in threads).
    c.data.num_threads = 4  # Threads assembling batches (in each process or worker).
    c.data.prefetch_batches = 8  # Batches assembled ahead (in each process or worker).
    c.data.shuffle_seed = 0
    # P(1 view), ..., P(num_input_views views) per example (data_pipelines/view_sampling.py); () = always all.
    c.data.view_count_probs = ()
    # Feature maps: "records" (the dataset's: part labels, Sapiens) | "random_encoder" (a frozen random
    # conv of the image seeded by feature_encoder_seed: data_pipelines/random_features.py).
    c.data.feature_source = "records"
    c.data.feature_encoder_seed = 0
    # Front-end-like corruption of input position maps (data_pipelines/corruption.py); zeros are off.
    c.data.corruption = ml_collections.ConfigDict()
    c.data.corruption.depth_noise = 0.0  # Std (metres) of the depth error at 1 m; grows with depth^2.
    c.data.corruption.misalign_degrees = 0.0  # Std of each view's random rotation about the head centre.
    c.data.corruption.misalign_translation = 0.0  # Std (metres) of each view's random shift per axis.
    c.data.corruption.misalign_log_scale = 0.0  # Std of each view's random log scale.
    c.data.corruption.hole_fraction = 0.0  # Image fraction of each view made untrusted in random discs.
    c.data.corruption.hole_radius = 4.0  # Disc radius in pixels of the output image.
    # Synthetic generator (used when the dataset dir does not exist yet).
    c.data.synthetic = ml_collections.ConfigDict()
    c.data.synthetic.subjects = 12
    c.data.synthetic.frames = 8
    c.data.synthetic.cameras = 8
    c.data.synthetic.resolution = 64
    c.data.synthetic.posmap_noise = 0.0  # Std (metres) of the structured depth error added to position maps.
    c.data.synthetic.distance_jitter = 0.05  # Relative jitter of camera distances (about 1 m).
    c.data.synthetic.focal_jitter = 0.05  # Relative jitter of focal lengths.
    c.data.synthetic.val_subjects = 2  # Held-out identities (split "val_subjects").
    c.data.synthetic.test_subjects = 2  # Held-out identities (split "test").
    c.data.synthetic.heldout_frames = 1  # Last frames of each training subject (split "val_expressions").
    c.data.synthetic.render_steps = 48  # Sphere-tracing steps per ray.
    c.data.synthetic.seed = 0
    c.data.synthetic.beard_prob = 0.0  # P(a subject has a chin beard).
    c.data.synthetic.lighting_jitter = 0.0  # Per-subject key light direction, intensity and tint (0: fixed).
    c.data.synthetic.hair_style_prob = 0.0  # P(short, long, bun, ponytail or bald hair instead of the cap).
    c.data.synthetic.dyed_hair_prob = 0.0  # P(dyed hair colour).
    c.data.synthetic.glasses_prob = 0.0  # P(glasses); a quarter of them sunglasses.
    c.data.synthetic.head_shape_jitter = 0.0  # Wider head proportions, chin, cheeks, neck (0: as before).
    c.data.synthetic.expression_cycles = 1.0  # Speed of each subject's expression video (more frames: raise it).

    c.model = ml_collections.ConfigDict()
    c.model.patch_size = 8
    c.model.width = 64
    c.model.depth = 2
    c.model.num_heads = 4
    c.model.mlp_ratio = 4.0
    c.model.qk_norm = True
    # LayerNorm scale and bias. Every LayerNorm feeds a Dense layer, which can absorb both: off gives
    # the same function class with fewer kernels (their gradients are column sums over every token).
    c.model.layer_norm_affine = True
    c.model.num_expression_tokens = 4
    c.model.cross_attn_from_layer = 0  # Blocks before this one skip cross-attention (cacheable prefix).
    # How the expression tokens reach the blocks from cross_attn_from_layer on: "cross_attention" (the
    # paper's) or "token" (they join the self-attention sequence instead: the paper's ablation).
    c.model.expression_injection = "cross_attention"
    c.model.use_posmap = True
    c.model.use_features = True
    c.model.use_plucker = True
    c.model.use_view_embedding = True
    c.model.posmap_scale = 0.15  # Head-space scale (metres) dividing position maps.
    c.model.head_channels = 32  # Width of the full-resolution upsampler.
    c.model.max_offset = 0.02  # Bound (metres) of predicted xyz offsets from the position map.
    c.model.max_ray_offset = 0.3  # Without position maps: bound (metres) of the move along each pixel's ray.
    c.model.log_scale_min = -9.0
    c.model.log_scale_max = -3.0
    c.model.init_scale_pixels = 1.0  # Initial Gaussian std in pixels (world size from depth / focal).
    c.model.init_opacity = 0.3
    c.model.sh_degree = 0
    c.model.dtype = "float32"  # Compute dtype: float32 or bfloat16 (params stay float32).
    c.model.attention_impl = "xla"  # xla | cudnn | pallas_tpu (jax.nn.dot_product_attention impl).
    c.model.remat_policy = "none"  # none | full | dots_saveable | dots_with_no_batch_dims_saveable
    c.model.scan_layers = False

    c.render = ml_collections.ConfigDict()
    c.render.backend = "auto"  # auto (pallas on GPU/TPU, xla on CPU) | pallas | xla | pallas_interpret | reference
    c.render.tile_size = 16
    c.render.max_tiles_per_gaussian = 16
    # (Gaussian, tile) pairs buffered per view; 0 = N * min(max_tiles_per_gaussian, tiles), which never
    # overflows but costs memory on the xla backend. Overflow is counted and logged as a train metric.
    c.render.max_intersections = 0
    # Examples rendered at once in the train/eval step (0 = the whole per-device batch); fewer bound
    # the rasterizer's memory at large batches (a lax.map over groups of examples, same result).
    c.render.examples_per_pass = 0
    c.render.near = 0.01
    c.render.far = 100.0
    c.render.background = (1.0, 1.0, 1.0)

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1000
    c.train.learning_rate = 3e-4
    c.train.warmup_steps = 100
    c.train.end_learning_rate_factor = 0.1
    c.train.weight_decay = 0.05
    c.train.adam_b1 = 0.9
    c.train.adam_b2 = 0.99
    c.train.grad_clip_norm = 1.0
    c.train.grad_accum_steps = 1
    c.train.l1_weight = 0.8
    c.train.ssim_weight = 0.2
    c.train.alpha_weight = 0.1
    c.train.random_background = True  # Composite targets over a random colour per example.
    c.train.perceptual_weight = 0.0
    c.train.perceptual_weights_path = ""  # Local .npz of VGG16 weights; never downloaded.
    c.train.max_consecutive_nonfinite = 10
    c.train.log_every = 10
    c.train.eval_every = 200
    c.train.eval_batches = 4
    c.train.checkpoint_every = 200
    c.train.keep_checkpoints = 3
    # Wall-clock seconds for the whole run (0 = off): a few timed steps size the schedule to fit
    # (avat3r_jax/train/time_budget.py); never more than num_steps.
    c.train.time_budget = 0.0

    # Device mesh; -1 on one axis absorbs the remaining devices.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    c.lock()
    return c
