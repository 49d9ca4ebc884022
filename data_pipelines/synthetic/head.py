"""A procedural head: identity and expression parameters, its signed distance field and materials.

Head frame: y up, the face looks down +z, metres, the head centred near the origin (about 0.15 m
wide without hair). The neck stays fixed in the world while the rest of the head turns.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.synthetic import sdf

# Part labels, the channels of the part-label feature map.
PART_NAMES = ("skin", "hair", "eye", "lip", "teeth", "background")
SKIN, HAIR, EYE, LIP, TEETH, BACKGROUND = range(len(PART_NAMES))
# Surface labels of the renderer: the parts, then accessories. The part-label features have no
# accessory channel (their count is the model's data.feature_channels): glasses count as hair there,
# the other non-skin solid of the head.
LABEL_NAMES = (*PART_NAMES, "glasses")
GLASSES = len(PART_NAMES)
FEATURE_PART = np.array([SKIN, HAIR, EYE, LIP, TEETH, BACKGROUND, HAIR], np.int32)  # [labels] -> part
SURFACE_LABELS = (SKIN, HAIR, EYE, LIP, TEETH, GLASSES)  # label of each row of part_distances
HAIR_STYLES = ("cap", "short", "long", "bun", "ponytail", "bald")

# Expression parameters: name -> (low, high). Angles in radians.
EXPRESSION_RANGES = {
    "jaw_open": (0.0, 1.0),
    "smile": (-0.3, 1.0),
    "brow_raise": (-0.6, 1.0),
    "blink": (0.0, 1.0),
    "gaze_yaw": (-0.35, 0.35),
    "gaze_pitch": (-0.25, 0.25),
    "head_pitch": (-0.12, 0.12),
    "head_yaw": (-0.15, 0.15),
    "head_roll": (-0.08, 0.08),
}
EXPRESSION_NAMES = tuple(EXPRESSION_RANGES)
NUM_EXPRESSION_PARAMS = len(EXPRESSION_NAMES)
NEUTRAL_EXPRESSION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], np.float32)

_SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.85, 0.64, 0.50], [0.62, 0.43, 0.31], [0.36, 0.24, 0.17]], np.float32)
_HAIR_COLOURS = np.array(
    [[0.05, 0.04, 0.035], [0.22, 0.13, 0.07], [0.45, 0.30, 0.16], [0.85, 0.70, 0.45], [0.60, 0.25, 0.10], [0.62, 0.62, 0.62]],
    np.float32,
)
_IRIS_COLOURS = np.array(
    [[0.30, 0.17, 0.08], [0.18, 0.10, 0.05], [0.30, 0.45, 0.70], [0.30, 0.50, 0.30], [0.50, 0.40, 0.20], [0.50, 0.55, 0.60]],
    np.float32,
)
_DYED_HAIR_COLOURS = np.array(
    [[0.15, 0.25, 0.65], [0.85, 0.35, 0.60], [0.45, 0.20, 0.60], [0.20, 0.55, 0.35], [0.92, 0.90, 0.85], [0.80, 0.10, 0.12]],
    np.float32,
)
_GLASSES_FRAME_COLOURS = np.array(
    [[0.03, 0.03, 0.03], [0.35, 0.20, 0.10], [0.70, 0.60, 0.35], [0.60, 0.62, 0.65], [0.60, 0.08, 0.08], [0.10, 0.20, 0.50]],
    np.float32,
)
_SUNGLASS_LENS = np.array([0.04, 0.04, 0.05], np.float32)
_NOISE_WAVES = 8
# The lighting of every subject without data.synthetic.lighting_jitter (a unit key light direction, white light).
DEFAULT_KEY_LIGHT = np.array([0.35, 0.55, 0.75], np.float32) / np.linalg.norm([0.35, 0.55, 0.75]).astype(np.float32)
WHITE_LIGHT = np.ones(3, np.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Identity:
    """Who the head is: proportions (scale factors around 1), colours (RGB in [0, 1]), hair, skin texture."""

    head_scale: jax.Array  # [3] width, height, depth of the cranium
    jaw_width: jax.Array  # []
    nose_length: jax.Array  # []
    nose_size: jax.Array  # []
    ear_size: jax.Array  # []
    eye_spacing: jax.Array  # []
    mouth_width: jax.Array  # []
    lip_fullness: jax.Array  # []
    skin_rgb: jax.Array  # [3]
    lip_rgb: jax.Array  # [3]
    hair_rgb: jax.Array  # [3]
    iris_rgb: jax.Array  # [3]
    hair_thickness: jax.Array  # [] metres
    hairline: jax.Array  # [] metres, height of the front hairline
    hair_back_length: jax.Array  # [] metres below the ears at the back
    hair_wave: jax.Array  # [] metres, amplitude of the hair surface waves
    noise_amplitude: jax.Array  # [] relative albedo variation of the skin
    noise_frequencies: jax.Array  # [_NOISE_WAVES, 3] rad/m
    noise_phases: jax.Array  # [_NOISE_WAVES]
    beard_thickness: jax.Array  # [] metres of the chin beard (hair label), 0: none
    key_light: jax.Array  # [3] unit direction towards the key light (world)
    light_rgb: jax.Array  # [3] colour and intensity of the key and fill lights
    # Head shape beyond head_scale (sample_head_shape); 1 is the shape of every older dataset.
    chin_length: jax.Array  # []
    cheek_width: jax.Array  # []
    neck_width: jax.Array  # []
    # Hair styles (sample_hair_style): the cranial cap and optional pieces; 0 lengths and radii: none.
    hair_cap: jax.Array  # [] 1: hair shell over the cranium, 0: bald
    hair_length: jax.Array  # [] metres of long hair falling below the cranium, behind the face
    bun_radius: jax.Array  # [] metres, a bun at the back of the crown
    ponytail_length: jax.Array  # [] metres, a tail hanging from the back of the head
    # Glasses (sample_glasses): round rims, bridge and temples; rim thickness 0: no glasses.
    glasses_rim: jax.Array  # [] metres, radius of the frame's wire
    glasses_lens_radius: jax.Array  # [] metres
    glasses_rgb: jax.Array  # [3] frame colour
    sunglasses: jax.Array  # [] 1: opaque dark lenses, 0: none (clear, not rendered)


def sample_identity(rng: np.random.Generator) -> Identity:
    """A random identity; all arrays float32 numpy."""
    f32 = np.float32

    def lerp_palette(palette: np.ndarray, t: float) -> np.ndarray:
        position = t * (len(palette) - 1)
        i = min(int(position), len(palette) - 2)
        return palette[i] + (position - i) * (palette[i + 1] - palette[i])

    skin = np.clip(lerp_palette(_SKIN_TONES, rng.uniform()) + rng.uniform(-0.03, 0.03, 3), 0, 1)
    hair = np.clip(_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15) + rng.uniform(-0.03, 0.03, 3), 0, 1)
    iris = np.clip(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] + rng.uniform(-0.04, 0.04, 3), 0, 1)
    directions = rng.normal(size=(_NOISE_WAVES, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    return Identity(
        head_scale=rng.uniform(0.92, 1.08, 3).astype(f32),
        jaw_width=f32(rng.uniform(0.85, 1.15)),
        nose_length=f32(rng.uniform(0.75, 1.3)),
        nose_size=f32(rng.uniform(0.8, 1.25)),
        ear_size=f32(rng.uniform(0.85, 1.2)),
        eye_spacing=f32(rng.uniform(0.92, 1.08)),
        mouth_width=f32(rng.uniform(0.85, 1.15)),
        lip_fullness=f32(rng.uniform(0.75, 1.3)),
        skin_rgb=skin.astype(f32),
        lip_rgb=np.clip(skin * np.array([0.85, 0.55, 0.55]) + np.array([0.08, 0.0, 0.01]), 0, 1).astype(f32),
        hair_rgb=hair.astype(f32),
        iris_rgb=iris.astype(f32),
        hair_thickness=f32(rng.uniform(0.004, 0.02)),
        hairline=f32(rng.uniform(0.05, 0.075)),
        hair_back_length=f32(rng.uniform(0.0, 0.06)),
        hair_wave=f32(rng.uniform(0.0, 0.0025)),
        noise_amplitude=f32(rng.uniform(0.02, 0.08)),
        noise_frequencies=(directions * rng.uniform(150.0, 600.0, (_NOISE_WAVES, 1))).astype(f32),
        noise_phases=rng.uniform(0, 2 * np.pi, _NOISE_WAVES).astype(f32),
        beard_thickness=f32(0.0),
        key_light=DEFAULT_KEY_LIGHT,
        light_rgb=WHITE_LIGHT,
        chin_length=f32(1.0),
        cheek_width=f32(1.0),
        neck_width=f32(1.0),
        hair_cap=f32(1.0),
        hair_length=f32(0.0),
        bun_radius=f32(0.0),
        ponytail_length=f32(0.0),
        glasses_rim=f32(0.0),
        glasses_lens_radius=f32(0.018),
        glasses_rgb=_GLASSES_FRAME_COLOURS[0],
        sunglasses=f32(0.0),
    )


def sample_styling(rng: np.random.Generator, beard_prob: float, lighting_jitter: float) -> dict[str, np.ndarray]:
    """``Identity`` fields of the optional variety: a chin beard with probability ``beard_prob``
    (3-8 mm thick) and, scaled by ``lighting_jitter`` (0 keeps ``DEFAULT_KEY_LIGHT`` and white), a
    jittered key light direction, an intensity factor ``exp(0.3 j N)`` and a warm/cool tint."""
    f32 = np.float32
    beard = f32(rng.uniform(0.003, 0.008)) if rng.uniform() < beard_prob else f32(0.0)
    direction = DEFAULT_KEY_LIGHT + lighting_jitter * rng.normal(size=3)
    direction = direction / np.linalg.norm(direction)
    warmth = lighting_jitter * rng.uniform(-0.25, 0.25)
    light = np.exp(0.3 * lighting_jitter * rng.normal()) * np.array([1.0 + warmth, 1.0, 1.0 - warmth])
    return {"beard_thickness": beard, "key_light": direction.astype(f32), "light_rgb": light.astype(f32)}


def sample_hair_style(rng: np.random.Generator, style_prob: float, dyed_prob: float) -> dict[str, np.ndarray]:
    """``Identity`` hair fields: with probability ``style_prob`` a style drawn uniformly from
    ``HAIR_STYLES[1:]`` (else the cap every older dataset has, unchanged), and with probability
    ``dyed_prob`` a dyed colour instead of the natural one."""
    f32 = np.float32
    style = HAIR_STYLES[1 + rng.integers(len(HAIR_STYLES) - 1)] if rng.uniform() < style_prob else "cap"
    out: dict[str, np.ndarray] = {}
    if style == "short":
        out |= {"hair_thickness": f32(rng.uniform(0.002, 0.005)), "hairline": f32(rng.uniform(0.06, 0.08)), "hair_back_length": f32(0.0)}
    elif style == "long":
        out |= {"hair_length": f32(rng.uniform(0.07, 0.15)), "hair_back_length": f32(rng.uniform(0.04, 0.07))}
    elif style == "bun":
        out |= {"bun_radius": f32(rng.uniform(0.022, 0.032)), "hair_thickness": f32(rng.uniform(0.004, 0.01))}
    elif style == "ponytail":
        out |= {"ponytail_length": f32(rng.uniform(0.07, 0.14)), "hair_thickness": f32(rng.uniform(0.004, 0.01))}
    elif style == "bald":
        out |= {"hair_cap": f32(0.0)}
    if rng.uniform() < dyed_prob:
        dyed = _DYED_HAIR_COLOURS[rng.integers(len(_DYED_HAIR_COLOURS))] + rng.uniform(-0.04, 0.04, 3)
        out["hair_rgb"] = np.clip(dyed, 0, 1).astype(f32)
    return out


def sample_glasses(rng: np.random.Generator, prob: float) -> dict[str, np.ndarray]:
    """``Identity`` glasses fields: with probability ``prob`` round glasses (wire 1.2-2.2 mm, lenses
    15-21 mm, a frame colour), a quarter of them sunglasses; otherwise none."""
    f32 = np.float32
    if rng.uniform() >= prob:
        return {}
    colour = _GLASSES_FRAME_COLOURS[rng.integers(len(_GLASSES_FRAME_COLOURS))] + rng.uniform(-0.03, 0.03, 3)
    return {
        "glasses_rim": f32(rng.uniform(0.0012, 0.0022)),
        "glasses_lens_radius": f32(rng.uniform(0.015, 0.021)),
        "glasses_rgb": np.clip(colour, 0, 1).astype(f32),
        "sunglasses": f32(rng.uniform() < 0.25),
    }


def sample_head_shape(rng: np.random.Generator, identity: Identity, jitter: float) -> dict[str, np.ndarray]:
    """``Identity`` shape fields widened by ``jitter`` (0: unchanged): cranium proportions and jaw
    width scaled by ``1 + jitter U(-0.1, 0.1)`` and ``1 + jitter U(-0.15, 0.15)``, chin length,
    cheek and neck width drawn around 1."""
    f32 = np.float32

    def around_one(low: float, high: float, size=None) -> np.ndarray:
        return np.asarray(1.0 + jitter * rng.uniform(low, high, size), f32)

    return {
        "head_scale": (identity.head_scale * around_one(-0.1, 0.1, 3)).astype(f32),
        "jaw_width": f32(identity.jaw_width * around_one(-0.15, 0.15)),
        "chin_length": around_one(-0.2, 0.25),
        "cheek_width": around_one(-0.12, 0.15),
        "neck_width": around_one(-0.15, 0.2),
    }


def sample_expression_trajectory(rng: np.random.Generator, num_frames: int, cycles: float = 1.0) -> np.ndarray:
    """A smooth expression "video" ``[num_frames, NUM_EXPRESSION_PARAMS]``: random slow sinusoids, clipped.

    Each parameter's two waves make 0.3-1.2 ``cycles`` per video (a longer video with more cycles
    visits more expressions)."""
    low, high = (np.array(v, np.float32) for v in zip(*EXPRESSION_RANGES.values(), strict=True))
    t = np.linspace(0.0, 1.0, num_frames, dtype=np.float32)[:, None, None]  # [F, 1, 1]
    frequency = cycles * rng.uniform(0.3, 1.2, (1, NUM_EXPRESSION_PARAMS, 2))  # cycles per video
    phase = rng.uniform(0, 2 * np.pi, (1, NUM_EXPRESSION_PARAMS, 2))
    amplitude = rng.uniform(0.3, 0.7, (1, NUM_EXPRESSION_PARAMS, 2))
    wave = np.sum(amplitude * np.sin(2 * np.pi * frequency * t + phase), -1)  # [F, P] in about [-1.4, 1.4]
    unit = np.clip(0.5 + 0.5 * wave, 0.0, 1.0)
    unit[:, EXPRESSION_NAMES.index("blink")] = np.clip(2.0 * unit[:, EXPRESSION_NAMES.index("blink")] - 1.0, 0.0, 1.0)
    return (low + unit * (high - low)).astype(np.float32)


def _expression(expression: jax.Array, name: str) -> jax.Array:
    return expression[..., EXPRESSION_NAMES.index(name)]


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Landmarks of one (identity, expression), shared by the SDF and the materials (scalars only)."""

    eye_centers: tuple[tuple[jax.Array, ...], ...]  # two (x, y, z)
    eye_radius: float
    gaze: tuple[jax.Array, ...]  # unit gaze direction in the head frame
    cavity_center: tuple[jax.Array, ...]
    cavity_radii: tuple[jax.Array, ...]
    jaw_rotation: jax.Array  # [3, 3]
    head_rotation: jax.Array  # [3, 3]


_JAW_HINGE = (0.0, -0.005, -0.02)
_HEAD_PIVOT = (0.0, -0.07, -0.02)
_SMILE_BEND = 16.0  # 1/m: lip corners rise by smile * bend * x^2


def _layout(identity: Identity, expression: jax.Array) -> _Layout:
    spacing = 0.031 * identity.eye_spacing
    yaw, pitch = _expression(expression, "gaze_yaw"), _expression(expression, "gaze_pitch")
    jaw_open = _expression(expression, "jaw_open")
    head_rotation = (
        sdf.rotation_y(_expression(expression, "head_yaw"))
        @ sdf.rotation_x(-_expression(expression, "head_pitch"))
        @ sdf.rotation_z(_expression(expression, "head_roll"))
    )
    return _Layout(
        eye_centers=((-spacing, 0.025, 0.068), (spacing, 0.025, 0.068)),
        eye_radius=0.0125,
        gaze=(jnp.sin(yaw) * jnp.cos(pitch), jnp.sin(pitch), jnp.cos(yaw) * jnp.cos(pitch)),
        cavity_center=(0.0, -0.045 - 0.011 * jaw_open, 0.086),
        cavity_radii=(0.019 * identity.mouth_width, 0.0018 + 0.013 * jaw_open, 0.03),
        jaw_rotation=sdf.rotation_x(0.3 * jaw_open),
        head_rotation=head_rotation,
    )


def _smile_bend(p: sdf.Vec3, smile: jax.Array) -> sdf.Vec3:
    return (p[0], p[1] - smile * _SMILE_BEND * p[0] * p[0], p[2])


def _min(*values: jax.Array) -> jax.Array:
    out = values[0]
    for v in values[1:]:
        out = jnp.minimum(out, v)
    return out


def has_style_pieces(identity: Identity) -> bool:
    """Whether any (of a stack of) identities has long hair, a bun, a ponytail or glasses: the SDF
    pieces that ``styled=False`` leaves out."""
    sizes = (identity.hair_length, identity.bun_radius, identity.ponytail_length, identity.glasses_rim)
    return any(bool(np.any(np.asarray(size) > 0)) for size in sizes)


def _parts(p: sdf.Vec3, identity: Identity, expression: jax.Array, styled: bool) -> tuple[jax.Array, ...]:
    """Distances of the skin, hair, eye, lip, teeth and glasses surfaces from world points ``p``."""
    layout = _layout(identity, expression)
    neck = sdf.vertical_cylinder(p, (0.0, -0.135, -0.02), 0.052 * identity.neck_width, 0.075)
    p = sdf.rotate_about(p, layout.head_rotation, _HEAD_PIVOT)
    p_jaw = sdf.rotate_about(p, layout.jaw_rotation, _JAW_HINGE)
    x, y, z = p

    w, h, d = identity.head_scale[0], identity.head_scale[1], identity.head_scale[2]
    cranium = sdf.ellipsoid(p, (0.0, 0.02, -0.01), (0.074 * w, 0.09 * h, 0.098 * d))
    midface = sdf.ellipsoid(p, (0.0, -0.02, 0.018), (0.062 * w * identity.cheek_width, 0.05, 0.068))
    chin = _chin(p_jaw, identity, 0.0)
    nose = sdf.capsule(p, (0.0, 0.022, 0.084), (0.0, -0.012, 0.086 + 0.022 * identity.nose_length), 0.0095 * identity.nose_size)
    nostril_z = 0.088 + 0.012 * identity.nose_length
    nostril_r = 0.0075 * identity.nose_size
    nostrils = jnp.minimum(sdf.sphere(p, (-0.009, -0.014, nostril_z), nostril_r), sdf.sphere(p, (0.009, -0.014, nostril_z), nostril_r))
    ear_x = 0.074 * w
    ear_radii = (0.009 * identity.ear_size, 0.03 * identity.ear_size, 0.019 * identity.ear_size)
    ears = jnp.minimum(sdf.ellipsoid(p, (-ear_x, 0.0, -0.012), ear_radii), sdf.ellipsoid(p, (ear_x, 0.0, -0.012), ear_radii))
    skin = sdf.smooth_min(cranium, midface, 0.02)
    skin = sdf.smooth_min(skin, chin, 0.02)
    skin = sdf.smooth_min(skin, sdf.smooth_min(nose, nostrils, 0.006), 0.008)
    skin = sdf.smooth_min(skin, ears, 0.006)
    skin = sdf.smooth_min(skin, neck, 0.03)

    # Eyes sit in sockets carved out of the skin; lids close from above with the blink parameter.
    r = layout.eye_radius
    eyes = _min(*(sdf.sphere(p, c, r) for c in layout.eye_centers))
    sockets = _min(*(sdf.sphere(p, c, r + 0.003) for c in layout.eye_centers))
    skin = sdf.smooth_subtract(skin, sockets, 0.003)
    blink = _expression(expression, "blink")
    lids = []
    for c in layout.eye_centers:
        shell = sdf.sphere(p, c, r + 0.0015)
        lids.append(jnp.maximum(shell, c[1] + r * (0.55 - 1.55 * blink) - y))  # upper lid
        lids.append(jnp.maximum(shell, y - (c[1] - 0.6 * r)))  # lower lid
    skin = jnp.minimum(skin, _min(*lids))

    # Mouth: lips bent up at the corners by the smile, split by a cavity that the jaw opens.
    smile = _expression(expression, "smile")
    bent, bent_jaw = _smile_bend(p, smile), _smile_bend(p_jaw, smile)
    width = identity.mouth_width * (1.0 + 0.15 * smile)
    upper_lip = sdf.ellipsoid(bent, (0.0, -0.040, 0.080), (0.023 * width, 0.0062 * identity.lip_fullness, 0.010))
    lower_lip = sdf.ellipsoid(bent_jaw, (0.0, -0.0505, 0.079), (0.021 * width, 0.0072 * identity.lip_fullness, 0.010))
    cavity = sdf.ellipsoid(bent, layout.cavity_center, layout.cavity_radii)
    lips = jnp.maximum(sdf.smooth_min(upper_lip, lower_lip, 0.003), -cavity)
    carved = jnp.maximum(skin, -cavity)
    interior = -cavity >= skin  # The cavity's wall inside the head is the mouth interior: lip label.
    lips = jnp.minimum(lips, jnp.where(interior, carved, jnp.inf))
    skin = jnp.where(interior, carved + 1e-3, carved)
    upper_teeth = sdf.rounded_box(p, (0.0, -0.0425, 0.073), (0.016, 0.0042, 0.006), 0.002)
    lower_teeth = sdf.rounded_box(p_jaw, (0.0, -0.0495, 0.072), (0.015, 0.0042, 0.006), 0.002)
    teeth = jnp.minimum(upper_teeth, lower_teeth)

    # Hair: the style's pieces (a cap over the cranium, long hair, a bun, a ponytail); eyebrows; a beard.
    waves = identity.hair_wave * jnp.sin(180.0 * x) * jnp.sin(150.0 * z + 90.0 * y)
    hair = _hair(p, identity, waves, styled)
    brow_y = 0.045 + 0.007 * _expression(expression, "brow_raise")
    brows = _min(*(sdf.ellipsoid(p, (c[0], brow_y, 0.079), (0.017, 0.0035, 0.006)) for c in layout.eye_centers))
    hair = jnp.minimum(hair, brows)
    hair = jnp.minimum(hair, _beard(p_jaw, bent_jaw, identity, width))
    glasses = _glasses(p, identity, layout) if styled else jnp.full_like(skin, jnp.inf)
    return skin, hair, eyes, lips, teeth, glasses


def _present(size: jax.Array, distance: jax.Array) -> jax.Array:
    """``distance`` where the piece's ``size`` is positive, else infinite (no surface)."""
    return jnp.where(size > 0.0, distance, jnp.inf)


def _hair(p: sdf.Vec3, identity: Identity, waves: jax.Array, styled: bool) -> jax.Array:
    """Distance to the hair of the identity's style (``sample_hair_style``), eyebrows and beard aside.

    The cap is a shell over the cranium above a tilted hairline plane; long hair is a tall ellipsoid
    around the head reaching ``hair_length`` below it, cut behind the face; a bun is a sphere at the
    back of the crown, a ponytail a capsule hanging from the back of the head; ``styled=False``
    evaluates the cap alone.
    """
    y, z = p[1], p[2]
    w, h, d = identity.head_scale[0], identity.head_scale[1], identity.head_scale[2]
    t = identity.hair_thickness
    shell = sdf.ellipsoid(p, (0.0, 0.02 + 0.3 * t, -0.01 - 0.2 * t), (0.074 * w + t, 0.09 * h + 1.3 * t, 0.098 * d + t))
    back_y = -0.05 - identity.hair_back_length
    slope = (identity.hairline - back_y) / 0.18
    plane = (identity.hairline + slope * (z - 0.08) - y) / jnp.sqrt(1.0 + slope * slope)
    cap = _present(identity.hair_cap, jnp.maximum(shell + waves, plane))
    if not styled:
        return cap
    length = identity.hair_length
    curtain = sdf.ellipsoid(p, (0.0, 0.02 - 0.5 * length, -0.018), (0.074 * w + t + 0.008, 0.09 * h + t + 0.5 * length, 0.098 * d + t))
    long_hair = _present(length, jnp.maximum(curtain + waves, z - 0.03))
    r = identity.bun_radius  # centred just outside the cap, 45 degrees up the back of the cranium
    out = 0.5 * r + t
    bun = _present(r, sdf.sphere(p, (0.0, 0.02 + 0.0636 * h + 0.7 * out, -0.01 - 0.0693 * d - 0.7 * out), r) + 0.3 * waves)
    back = -0.01 - 0.098 * d
    tail_top = (0.0, 0.02 + 0.03 * h, back - 0.004)
    tail_bottom = (0.0, tail_top[1] - identity.ponytail_length, back - 0.03)
    ponytail = _present(identity.ponytail_length, sdf.capsule(p, tail_top, tail_bottom, 0.013) + 0.3 * waves)
    main, extras = jnp.minimum(cap, long_hair), jnp.minimum(bun, ponytail)
    both = jnp.isfinite(main) & jnp.isfinite(extras)  # smooth_min of an absent (infinite) piece is NaN
    return jnp.where(both, sdf.smooth_min(main, extras, 0.008), jnp.minimum(main, extras))


_GLASSES_Z = 0.097  # plane of the rims in the head frame (in front of the eyes and brows)


def _glasses(p: sdf.Vec3, identity: Identity, layout: _Layout) -> jax.Array:
    """Distance to round glasses: two rims (tori) around the eyes, a bridge over the nose, temples back
    to the ears, opaque lenses for sunglasses; infinite when ``glasses_rim`` is 0."""
    rim, radius = identity.glasses_rim, identity.glasses_lens_radius
    ear_x = 0.074 * identity.head_scale[0] + 0.004
    pieces = []
    for side, (cx, cy, _) in zip((-1.0, 1.0), layout.eye_centers, strict=True):
        center = (cx, cy, _GLASSES_Z)
        pieces.append(sdf.torus_z(p, center, radius, rim))
        pieces.append(sdf.capsule(p, (cx + side * radius, cy, _GLASSES_Z), (side * ear_x, cy - 0.003, -0.01), rim))
        pieces.append(_present(identity.sunglasses, sdf.disc_z(p, center, radius, 0.6 * rim)))
    inner = layout.eye_centers[1][0] - radius
    pieces.append(sdf.capsule(p, (-inner, 0.03, _GLASSES_Z + 0.002), (inner, 0.03, _GLASSES_Z + 0.002), rim))
    return _present(rim, _min(*pieces))


def _chin(p_jaw: sdf.Vec3, identity: Identity, grow: jax.Array | float) -> jax.Array:
    """Distance to the chin ellipsoid (moving with the jaw), its radii grown by ``grow`` metres."""
    length = identity.chin_length
    center = (0.0, -0.058 - 0.012 * (length - 1.0), 0.024)
    return sdf.ellipsoid(p_jaw, center, (0.05 * identity.jaw_width + grow, 0.036 * length + grow, 0.058 + grow))


def _beard(p_jaw: sdf.Vec3, bent_jaw: sdf.Vec3, identity: Identity, mouth_width: jax.Array) -> jax.Array:
    """Distance to a chin beard: a shell ``beard_thickness`` over the chin below the mouth, clear of the
    lips, moving with the jaw; infinite (no surface) when the thickness is 0."""
    t = identity.beard_thickness
    shell = _chin(p_jaw, identity, t)
    below_mouth = p_jaw[1] + 0.047
    lip_clearance = sdf.ellipsoid(bent_jaw, (0.0, -0.05, 0.08), (0.027 * mouth_width, 0.012, 0.03))
    return _present(t, jnp.maximum(jnp.maximum(shell, below_mouth), -lip_clearance))


def part_distances(p: sdf.Vec3, identity: Identity, expression: jax.Array, styled: bool = True) -> jax.Array:
    """Distances ``[6, ...]`` of the skin, hair, eye, lip, teeth and glasses surfaces (labels
    ``SURFACE_LABELS``); ``styled=False`` leaves out long hair, bun, ponytail and glasses
    (``has_style_pieces``), which every identity without them may skip."""
    return jnp.stack(_parts(p, identity, expression, styled), 0)


def head_sdf(p: sdf.Vec3, identity: Identity, expression: jax.Array, styled: bool = True) -> jax.Array:
    """Distance ``[...]`` to the whole head."""
    return _min(*_parts(p, identity, expression, styled))


def albedo(p: sdf.Vec3, label: jax.Array, identity: Identity, expression: jax.Array) -> jax.Array:
    """Surface colour ``[..., 3]`` at world points ``p`` of surface ``label [...]`` (``LABEL_NAMES``)."""
    layout = _layout(identity, expression)
    q = sdf.rotate_about(p, layout.head_rotation, _HEAD_PIVOT)
    f = identity.noise_frequencies
    waves = [jnp.sin(f[k, 0] * q[0] + f[k, 1] * q[1] + f[k, 2] * q[2] + identity.noise_phases[k]) for k in range(f.shape[0])]
    noise = sum(waves) * (2.0 / f.shape[0]) ** 0.5  # about unit variance
    skin = identity.skin_rgb * (1.0 + identity.noise_amplitude * noise[..., None])

    strands = 0.8 + 0.2 * jnp.sin(260.0 * jnp.arctan2(q[0], q[2] + 0.02) + 60.0 * q[1] + 2.0 * noise)
    hair = identity.hair_rgb * strands[..., None]

    left, right = layout.eye_centers
    center = tuple(jnp.where(q[0] < 0.0, a, b) for a, b in zip(left, right, strict=True))
    direction = sdf.sub(q, center)
    g = layout.gaze
    cos_gaze = (direction[0] * g[0] + direction[1] * g[1] + direction[2] * g[2]) / jnp.maximum(sdf.length(direction), 1e-9)
    sclera = jnp.array([0.93, 0.91, 0.88])
    eye = jnp.where((cos_gaze > 0.87)[..., None], identity.iris_rgb, sclera)
    eye = jnp.where((cos_gaze > 0.975)[..., None], jnp.array([0.02, 0.02, 0.02]), eye)

    in_cavity = sdf.ellipsoid(_smile_bend(q, _expression(expression, "smile")), layout.cavity_center, layout.cavity_radii) > -0.0015
    lips = jnp.where(in_cavity[..., None], jnp.array([0.28, 0.06, 0.07]), identity.lip_rgb)
    teeth = jnp.array([0.92, 0.9, 0.82])
    background = jnp.zeros(3)
    lens = _min(*(sdf.length(sdf.sub((q[0], q[1], 0.0), (c[0], c[1], 0.0))) for c in layout.eye_centers))
    in_lens = lens < identity.glasses_lens_radius - identity.glasses_rim
    glasses = jnp.where(in_lens[..., None], _SUNGLASS_LENS, identity.glasses_rgb)
    palette = jnp.stack(jnp.broadcast_arrays(skin, hair, eye, lips, teeth, background, glasses), 0)  # [labels, ..., 3]
    return jnp.take_along_axis(palette, label[None, ..., None], axis=0)[0]


def landmarks(identity: Identity, expression: jax.Array) -> dict[str, jax.Array]:
    """World positions ``[3]`` of the mouth (between the lips) and the eye centres."""
    layout = _layout(identity, expression)
    points = {"mouth": (0.0, -0.045, 0.09), "right_eye": layout.eye_centers[0], "left_eye": layout.eye_centers[1]}
    to_world = layout.head_rotation.T  # rotate_about applies R^T: pass R^T to apply R (head frame -> world)
    return {
        name: jnp.stack(sdf.rotate_about(tuple(jnp.asarray(v, jnp.float32) for v in p), to_world, _HEAD_PIVOT))
        for name, p in points.items()
    }
