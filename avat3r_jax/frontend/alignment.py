"""Multi-view global alignment of DUSt3R pair predictions (DUSt3R's ``PointCloudOptimizer``, in JAX/optax).

Unknowns: per view a log-depth map, a camera-to-world pose (quaternion + signed-log translation) and
a focal length (principal point fixed at the image centre unless asked); per pair a similarity
(quaternion, signed-log translation, log-scale) taking the pair's frame (view i's camera, the
network's scale) to the world. The loss is DUSt3R's: for every pair and both of its point maps, the
confidence-weighted (``log conf``) Euclidean distance between the view's unprojected depth and the
pair's points under the pair similarity, averaged over pixels. The pair scales are normalised so their
geometric mean is ``base_scale`` (otherwise all depths and scales shrink to zero).

Initialisation as DUSt3R's ``init_minimum_spanning_tree``: the maximum-confidence spanning tree
(Prim's algorithm, static shapes) chains weighted Procrustes-with-scale registrations from the
strongest pair; each view's focal is the Weiszfeld estimate from its own points, its pose the
Procrustes fit of its own points (in its camera frame) to the chained cloud. Then ``iterations``
Adam steps under a cosine (or linear) learning-rate schedule, in one jitted program.

Our conventions: pixel centres at ``+0.5`` (so the centred principal point is ``(W/2, H/2)``, half a
pixel from dust3r's integer-centre grid), OpenCV ``world_to_cam``, quaternions ``w, x, y, z``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from avat3r_jax.frontend.pairs import PairPredictions
from avat3r_jax.geometry import invert_rigid, make_intrinsics, pixel_grid, quaternion_to_rotation, rotation_to_quaternion

MAX_VIEWS = 4
_FOCAL_FLOOR = 0.05  # Weiszfeld focal clamp in units of dust3r's 60-degree focal_base (keeps its log finite).


@dataclasses.dataclass(frozen=True)
class AlignmentSettings:
    """Optimiser settings; defaults are dust3r's (``global_alignment_loop``, ``BasePCOptimizer``)."""

    iterations: int = 300
    learning_rate: float = 0.01
    min_learning_rate: float = 1e-6
    schedule: Literal["cosine", "linear"] = "cosine"
    min_confidence: float = 3.0  # dust3r's min_conf_thr: Alignment.valid = confidence > this
    base_scale: float = 0.5  # geometric mean of the pair scales
    focal_break: float = 20.0  # focal parametrised as focal_break * log(f)
    optimize_principal_point: bool = False
    weiszfeld_iterations: int = 10

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"AlignmentSettings.iterations must be >= 1, got {self.iterations}")
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"AlignmentSettings.schedule must be 'cosine' or 'linear', got {self.schedule!r}")
        if not (self.learning_rate > 0 and self.base_scale > 0 and self.focal_break > 0):
            raise ValueError("AlignmentSettings.learning_rate, base_scale and focal_break must be > 0")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Alignment:
    """Aligned cameras and point maps of ``V`` views at the network resolution ``H x W``.

    ``K [V, 3, 3]`` (pixel centres at +0.5), ``world_to_cam [V, 4, 4]`` (OpenCV), ``points [V, H, W, 3]``
    (world frame), ``depth [V, H, W]``, ``confidence [V, H, W]`` (per pixel the maximum DUSt3R
    confidence over the pairs that predict it), ``valid [V, H, W]`` (``confidence > min_confidence``),
    ``loss`` (final) and ``initial_loss`` (after initialisation) scalars.
    """

    K: jax.Array
    world_to_cam: jax.Array
    points: jax.Array
    depth: jax.Array
    confidence: jax.Array
    valid: jax.Array
    loss: jax.Array
    initial_loss: jax.Array


# ----------------------------------------------------------------------------------------------
# Small math pieces (pure, shape-static).


def signed_log1p(x: jax.Array) -> jax.Array:
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def signed_expm1(x: jax.Array) -> jax.Array:
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


def weighted_procrustes(src: jax.Array, dst: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Similarity ``(s, R [3, 3], T [3])`` minimising ``sum w |s R src + T - dst|^2`` (weighted).

    ``src``, ``dst [N, 3]``, ``weights [N]`` (>= 0, not all zero). The rotation is Horn's: the unit
    quaternion of the largest eigenvalue of the 4x4 cross-covariance form (always a proper rotation);
    the scale is then optimal for it (equal to Umeyama's).
    """
    w = weights / jnp.sum(weights)
    mu_src, mu_dst = w @ src, w @ dst
    src_c, dst_c = src - mu_src, dst - mu_dst
    m = jnp.einsum("n,ni,nj->ij", w, src_c, dst_c)  # [3, 3]: sum w src_a dst_b
    (sxx, sxy, sxz), (syx, syy, syz), (szx, szy, szz) = m[0], m[1], m[2]
    horn = jnp.array(
        [
            [sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
            [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
            [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
            [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz],
        ]
    )
    _, vectors = jnp.linalg.eigh(horn)
    rotation = quaternion_to_rotation(vectors[:, -1])
    variance = jnp.sum(w * jnp.sum(src_c * src_c, -1))
    scale = jnp.sum(rotation * m.T) / jnp.maximum(variance, 1e-30)
    translation = mu_dst - scale * rotation @ mu_src
    return scale, rotation, translation


def estimate_focal(points_cam: jax.Array, principal_point: jax.Array, iterations: int = 10) -> jax.Array:
    """Focal length (pixels) of camera-frame points ``[H, W, 3]``: dust3r's Weiszfeld estimate.

    Minimises ``sum |pixel - pp - f (x, y) / z|`` over the pixel centres by iteratively re-weighted
    least squares from the L2 closed form.
    """
    height, width = points_cam.shape[:2]
    pixels = (pixel_grid(height, width) - principal_point).reshape(-1, 2)
    pts = points_cam.reshape(-1, 3)
    xy_over_z = jnp.nan_to_num(pts[:, :2] / pts[:, 2:3], nan=0.0, posinf=0.0, neginf=0.0)
    dot_xy_px = jnp.sum(xy_over_z * pixels, -1)
    dot_xy_xy = jnp.sum(xy_over_z * xy_over_z, -1)
    focal = jnp.mean(dot_xy_px) / jnp.mean(dot_xy_xy)
    for _ in range(iterations):
        distance = jnp.linalg.norm(pixels - focal * xy_over_z, axis=-1)
        w = 1.0 / jnp.maximum(distance, 1e-8)
        focal = jnp.mean(w * dot_xy_px) / jnp.mean(w * dot_xy_xy)
    focal_base = max(height, width) / (2 * np.tan(np.deg2rad(60) / 2))
    return jnp.maximum(focal, _FOCAL_FLOOR * focal_base)


def depth_to_points(depth: jax.Array, focal: jax.Array, principal_point: jax.Array) -> jax.Array:
    """Camera-frame points ``[V, H, W, 3]`` from depth ``[V, H, W]``, focal ``[V]``, principal point ``[V, 2]``."""
    grid = pixel_grid(*depth.shape[1:])  # [H, W, 2]
    xy = (grid - principal_point[:, None, None, :]) / focal[:, None, None, None]
    return jnp.concatenate([xy, jnp.ones_like(depth[..., None])], -1) * depth[..., None]


def _apply_similarity(scale, rotation, translation, points):
    """``scale R p + T`` for ``points [..., 3]``."""
    return scale * jnp.einsum("ij,...j->...i", rotation, points) + translation


def _rotate(rotation: jax.Array, points: jax.Array) -> jax.Array:
    """``R p`` for ``rotation [B, 3, 3]`` and ``points [B, H, W, 3]`` (elementwise: fuses, unlike a tiny batched dot)."""
    return jnp.sum(rotation[:, None, None, :, :] * points[..., None, :], -1)


def _safe_norm(x: jax.Array) -> jax.Array:
    """Euclidean norm over the last axis with a zero (not NaN) gradient at 0."""
    sq = jnp.sum(x * x, -1)
    return jnp.sqrt(jnp.where(sq > 1e-30, sq, 1.0)) * (sq > 1e-30)


# ----------------------------------------------------------------------------------------------
# The graph of pairs (static facts from ``PairPredictions.pairs``).


@dataclasses.dataclass(frozen=True)
class _Graph:
    num_views: int
    first: np.ndarray  # [P] view i of each pair
    second: np.ndarray  # [P] view j of each pair
    reverse: np.ndarray  # [P] index of pair (j, i)


def _graph(pairs: tuple[tuple[int, int], ...]) -> _Graph:
    """Checks the pair list and returns its static index arrays (one clear line on a bad graph)."""
    if not pairs:
        raise ValueError("alignment needs pair predictions, got 0 pairs")
    views = sorted({v for pair in pairs for v in pair})
    num_views = len(views)
    if views != list(range(num_views)):
        raise ValueError(f"pair view indices must be 0..V-1 without gaps, got views {views}")
    if not 2 <= num_views <= MAX_VIEWS:
        raise ValueError(f"global alignment takes 2 to {MAX_VIEWS} views, got {num_views}")
    if any(i == j for i, j in pairs) or len(set(pairs)) != len(pairs):
        raise ValueError(f"pairs must be distinct (i, j) with i != j, got {pairs}")
    index = {pair: n for n, pair in enumerate(pairs)}
    missing = [(j, i) for i, j in pairs if (j, i) not in index]
    if missing:
        raise ValueError(f"pairs must be symmetrized (both (i, j) and (j, i)); missing {missing}")
    linked, frontier = {0}, [0]
    while frontier:
        v = frontier.pop()
        for i, j in pairs:
            if i == v and j not in linked:
                linked.add(j)
                frontier.append(j)
    if len(linked) != num_views:
        raise ValueError(f"the pair graph must connect all {num_views} views, got pairs {pairs}")
    first = np.array([i for i, _ in pairs], np.int32)
    second = np.array([j for _, j in pairs], np.int32)
    reverse = np.array([index[(j, i)] for i, j in pairs], np.int32)
    return _Graph(num_views, first, second, reverse)


def _check_predictions(pred: PairPredictions) -> _Graph:
    graph = _graph(tuple(tuple(int(v) for v in pair) for pair in pred.pairs))
    num_pairs = len(pred.pairs)
    shape = tuple(pred.pts_i.shape)
    if len(shape) != 4 or shape[0] != num_pairs or shape[-1] != 3:
        raise ValueError(f"pts_i must be [P={num_pairs}, H, W, 3], got {shape}")
    expected = {"pts_j": shape, "conf_i": shape[:3], "conf_j": shape[:3]}
    for name, want in expected.items():
        got = tuple(getattr(pred, name).shape)
        if got != want:
            raise ValueError(f"{name} must have shape {want} to match pts_i, got {got}")
    _check_finite(pred.pts_i, pred.pts_j, pred.conf_i, pred.conf_j, what="pair predictions")
    if _is_concrete(pred.conf_i) and bool(_min_of(pred.conf_i, pred.conf_j) < 1.0):
        raise ValueError("pair confidences must be >= 1 (DUSt3R's 1 + exp(x)); got smaller values")
    return graph


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


@jax.jit
def _all_finite(*arrays):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))


@jax.jit
def _min_of(*arrays):
    return jnp.min(jnp.stack([jnp.min(a) for a in arrays]))


def _check_finite(*arrays, what: str) -> None:
    if all(_is_concrete(a) for a in arrays) and not bool(_all_finite(*arrays)):
        raise ValueError(f"{what} contain NaN or infinite values")


# ----------------------------------------------------------------------------------------------
# Parameters and the loss.


def _pair_transforms(params: dict, normalize_scale: bool, base_scale: float):
    """Per-pair ``(scale [P], R [P, 3, 3], T [P, 3])`` from the pair parameters."""
    log_scale = params["pw_log_scale"]
    if normalize_scale:
        log_scale = log_scale + (np.log(base_scale) - jnp.mean(log_scale))
    scale = jnp.exp(log_scale)
    rotation = quaternion_to_rotation(params["pw_quat"])
    translation = scale[:, None] * signed_expm1(params["pw_trans"])
    return scale, rotation, translation


def _camera_state(params: dict, settings: AlignmentSettings, image_hw: tuple[int, int]):
    """``(focal [V], pp [V, 2], cam_to_world R [V, 3, 3], centres [V, 3])`` from the camera parameters."""
    height, width = image_hw
    focal = jnp.exp(params["focal"] / settings.focal_break)
    pp = jnp.array([width / 2.0, height / 2.0]) + 10.0 * params["pp"]
    rotation = quaternion_to_rotation(params["cam_quat"])
    centres = signed_expm1(params["cam_trans"])
    return focal, pp, rotation, centres


def _world_points(log_depth, focal, pp, rotation, centres):
    cam = depth_to_points(jnp.exp(log_depth), focal, pp)
    return _rotate(rotation, cam) + centres[:, None, None, :]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _LossTerms:
    """The loss's constant inputs, computed once: points, weights ``log conf`` and view selectors."""

    pts_i: jax.Array  # [P, H, W, 3]
    weight_i: jax.Array  # [P, H, W]
    select_i: jax.Array  # [P, V] one-hot of view i (an einsum, not a gather: no scatter in the gradient)
    pts_j: jax.Array
    weight_j: jax.Array
    select_j: jax.Array


def _loss_terms(pred: PairPredictions, graph: _Graph) -> _LossTerms:
    one_hot = lambda views: jnp.asarray(np.eye(graph.num_views, dtype=np.float32)[views])
    return _LossTerms(pred.pts_i, jnp.log(pred.conf_i), one_hot(graph.first), pred.pts_j, jnp.log(pred.conf_j), one_hot(graph.second))


def _alignment_loss(world, terms: _LossTerms, scale, rotation, translation):
    """DUSt3R's loss: mean over pairs and pixels of ``log conf * |world point - aligned prediction|``, i plus j."""

    def side(points, weight, select):
        aligned = _rotate(scale[:, None, None] * rotation, points) + translation[:, None, None, :]
        target = jnp.einsum("pv,vhwc->phwc", select, world)
        return jnp.mean(weight * _safe_norm(target - aligned))

    return side(terms.pts_i, terms.weight_i, terms.select_i) + side(terms.pts_j, terms.weight_j, terms.select_j)


def _optimize(loss_fn, params: dict, settings: AlignmentSettings):
    """``iterations`` Adam steps (betas 0.9, 0.9 as dust3r) under the schedule; returns final params."""
    n = settings.iterations
    lr, lr_min = settings.learning_rate, settings.min_learning_rate
    if settings.schedule == "cosine":
        schedule = lambda step: lr_min + (lr - lr_min) * (1 + jnp.cos(jnp.pi * step / n)) / 2
    else:
        schedule = lambda step: lr + (lr_min - lr) * step / n
    optimizer = optax.adam(schedule, b1=0.9, b2=0.9)
    grad_fn = jax.grad(loss_fn)

    def step(_, carry):
        p, state = carry
        updates, state = optimizer.update(grad_fn(p), state, p)
        return optax.apply_updates(p, updates), state

    params, _ = jax.lax.fori_loop(0, n, step, (params, optimizer.init(params)))
    return params


def _image_confidence(pred: PairPredictions, graph: _Graph) -> jax.Array:
    """``[V, H, W]``: per pixel the maximum confidence over the pairs predicting that view."""
    conf = jnp.zeros((graph.num_views, *pred.conf_i.shape[1:]), pred.conf_i.dtype)
    return conf.at[graph.first].max(pred.conf_i).at[graph.second].max(pred.conf_j)


def _best_own_pair(pred: PairPredictions, graph: _Graph) -> jax.Array:
    """``[V]``: per view, the pair ``(v, k)`` whose ``conf_i`` (v's own points) is most confident on average."""
    mean_conf = jnp.mean(pred.conf_i, axis=(1, 2))  # [P]
    own = graph.first[None, :] == np.arange(graph.num_views)[:, None]  # [V, P]
    return jnp.argmax(jnp.where(own, mean_conf[None, :], -jnp.inf), axis=1)


def _result(params, pred, graph, terms, settings, cameras, scale, rotation, translation, initial_loss):
    """Assembles the Alignment from final parameters and camera state ``(focal, pp, R, centres)``."""
    focal, pp, cam_rotation, centres = cameras
    world = _world_points(params["log_depth"], focal, pp, cam_rotation, centres)
    loss = _alignment_loss(world, terms, scale, rotation, translation)
    cam_to_world = jnp.zeros((graph.num_views, 4, 4)).at[:, :3, :3].set(cam_rotation).at[:, :3, 3].set(centres).at[:, 3, 3].set(1.0)
    confidence = _image_confidence(pred, graph)
    return Alignment(
        K=make_intrinsics(focal, focal, pp[:, 0], pp[:, 1]),
        world_to_cam=invert_rigid(cam_to_world),
        points=world,
        depth=jnp.exp(params["log_depth"]),
        confidence=confidence,
        valid=confidence > settings.min_confidence,
        loss=loss,
        initial_loss=initial_loss,
    )


# ----------------------------------------------------------------------------------------------
# Unknown cameras: spanning-tree initialisation, then joint optimisation.


def _spanning_tree_cloud(pred: PairPredictions, graph: _Graph) -> jax.Array:
    """``[V, H, W, 3]``: every view's points chained into the frame of the strongest pair's first view.

    Prim's algorithm on the pair scores ``mean(conf_i) * mean(conf_j)`` (dust3r's edge score), grown
    from the strongest pair; each new view comes from the best pair linking it to the tree, registered
    by weighted Procrustes with scale on the view already placed.
    """
    score = jnp.mean(pred.conf_i, axis=(1, 2)) * jnp.mean(pred.conf_j, axis=(1, 2))  # [P]
    first, second = jnp.asarray(graph.first), jnp.asarray(graph.second)
    start = jnp.argmax(score)
    cloud = jnp.zeros((graph.num_views, *pred.pts_i.shape[1:]), pred.pts_i.dtype)
    cloud = cloud.at[first[start]].set(pred.pts_i[start]).at[second[start]].set(pred.pts_j[start])
    done = jnp.zeros(graph.num_views, bool).at[first[start]].set(True).at[second[start]].set(True)
    for _ in range(graph.num_views - 2):
        crossing = done[first] != done[second]
        e = jnp.argmax(jnp.where(crossing, score, -jnp.inf))
        i_placed = done[first[e]]
        placed_view = jnp.where(i_placed, first[e], second[e])
        new_view = jnp.where(i_placed, second[e], first[e])
        src = jnp.where(i_placed, pred.pts_i[e], pred.pts_j[e]).reshape(-1, 3)
        weights = jnp.where(i_placed, pred.conf_i[e], pred.conf_j[e]).reshape(-1)
        new_points = jnp.where(i_placed, pred.pts_j[e], pred.pts_i[e])
        s, r, t = weighted_procrustes(src, cloud[placed_view].reshape(-1, 3), weights)
        cloud = cloud.at[new_view].set(_apply_similarity(s, r, t, new_points))
        done = done.at[new_view].set(True)
    return cloud


def _initial_params(pred: PairPredictions, graph: _Graph, settings: AlignmentSettings) -> dict:
    """dust3r's ``init_minimum_spanning_tree`` + ``init_from_pts3d``, as parameters."""
    height, width = pred.pts_i.shape[1:3]
    cloud = _spanning_tree_cloud(pred, graph)
    pp = jnp.array([width / 2.0, height / 2.0])
    own = _best_own_pair(pred, graph)  # [V]
    own_points = pred.pts_i[own]  # [V, H, W, 3]: each view's points in its own camera frame
    cam_s, cam_r, cam_t = jax.vmap(weighted_procrustes)(
        own_points.reshape(graph.num_views, -1, 3), cloud.reshape(graph.num_views, -1, 3), pred.conf_i[own].reshape(graph.num_views, -1)
    )
    del cam_s  # the pose is rigid; the depth below carries the cloud's scale
    focal = jax.vmap(lambda p: estimate_focal(p, pp, settings.weiszfeld_iterations))(own_points)
    pw_s, pw_r, pw_t = jax.vmap(weighted_procrustes)(
        pred.pts_i.reshape(len(graph.first), -1, 3),
        cloud[graph.first].reshape(len(graph.first), -1, 3),
        pred.conf_i.reshape(len(graph.first), -1),
    )
    log_scale = jnp.log(pw_s)
    s_factor = jnp.exp(np.log(settings.base_scale) - jnp.mean(log_scale))  # the normalisation the loss applies
    depth = jnp.einsum("vji,vhwj->vhwi", cam_r, cloud - cam_t[:, None, None, :])[..., 2] * s_factor
    return dict(
        log_depth=jnp.log(jnp.maximum(depth, 1e-6)),
        cam_quat=rotation_to_quaternion(cam_r),
        cam_trans=signed_log1p(cam_t * s_factor),
        focal=settings.focal_break * jnp.log(focal),
        pp=jnp.zeros((graph.num_views, 2)),
        pw_quat=rotation_to_quaternion(pw_r),
        pw_trans=signed_log1p(pw_t / pw_s[:, None]),
        pw_log_scale=log_scale,
    )


@functools.partial(jax.jit, static_argnames=("settings",))
def _global_align_jit(pred: PairPredictions, settings: AlignmentSettings) -> Alignment:
    graph = _graph(pred.pairs)
    hw = tuple(pred.pts_i.shape[1:3])
    terms = _loss_terms(pred, graph)
    params = _initial_params(pred, graph, settings)
    frozen_pp = params["pp"]

    def loss_fn(p):
        if not settings.optimize_principal_point:
            p = {**p, "pp": frozen_pp}
        focal, pp, rotation, centres = _camera_state(p, settings, hw)
        world = _world_points(p["log_depth"], focal, pp, rotation, centres)
        return _alignment_loss(world, terms, *_pair_transforms(p, True, settings.base_scale))

    initial_loss = loss_fn(params)
    params = _optimize(loss_fn, params, settings)
    if not settings.optimize_principal_point:
        params = {**params, "pp": frozen_pp}
    return _result(
        params,
        pred,
        graph,
        terms,
        settings,
        _camera_state(params, settings, hw),
        *_pair_transforms(params, True, settings.base_scale),
        initial_loss,
    )


def global_align(pred: PairPredictions, settings: AlignmentSettings = AlignmentSettings()) -> Alignment:
    """Cameras and world point maps of 2-4 views from their pair predictions (DUSt3R's global alignment).

    The world frame is the first camera of the most confident pair at dust3r's normalised scale
    (pair scales' geometric mean ``base_scale``); poses are known up to that similarity.
    """
    _check_predictions(pred)
    return _global_align_jit(pred, settings)


# ----------------------------------------------------------------------------------------------
# Known cameras: the cameras stay as given; depths and pair similarities are fitted to them.


def _known_camera_params(pred: PairPredictions, graph: _Graph, cam_rotation: jax.Array, centres: jax.Array) -> dict:
    """dust3r's ``init_from_known_poses``, with the pair frame's pose read off the known camera i.

    Pair (i, j)'s rotation and translation are camera i's; its scale is the known baseline over the
    baseline the pair predicts (camera j's centre in the pair frame, from the Procrustes fit of j's own
    points onto the pair's points of j). Each view's depth starts from its most confident own points.
    """
    num_pairs = len(graph.first)
    own_j = pred.pts_i[graph.reverse].reshape(num_pairs, -1, 3)  # view j's points in j's frame
    weights = (pred.conf_j * pred.conf_i[graph.reverse]).reshape(num_pairs, -1)
    _, _, centre_j_in_pair = jax.vmap(weighted_procrustes)(own_j, pred.pts_j.reshape(num_pairs, -1, 3), weights)
    baseline = jnp.linalg.norm(centres[graph.second] - centres[graph.first], axis=-1)
    scale = baseline / jnp.maximum(jnp.linalg.norm(centre_j_in_pair, axis=-1), 1e-12)
    scale = jnp.where(scale > 0, scale, 1.0)
    own = _best_own_pair(pred, graph)
    depth = pred.pts_i[own][..., 2] * scale[own][:, None, None]
    return dict(
        log_depth=jnp.log(jnp.maximum(depth, 1e-6)),
        pw_quat=rotation_to_quaternion(cam_rotation[graph.first]),
        pw_trans=signed_log1p(centres[graph.first] / scale[:, None]),
        pw_log_scale=jnp.log(scale),
    )


@functools.partial(jax.jit, static_argnames=("settings",))
def _align_to_cameras_jit(pred: PairPredictions, K: jax.Array, world_to_cam: jax.Array, settings: AlignmentSettings) -> Alignment:
    graph = _graph(pred.pairs)
    focal = K[:, 0, 0]  # dust3r's single focal; K itself is returned unchanged
    cam_to_world = invert_rigid(world_to_cam)
    cameras = (focal, K[:, :2, 2], cam_to_world[:, :3, :3], cam_to_world[:, :3, 3])
    terms = _loss_terms(pred, graph)
    params = _known_camera_params(pred, graph, cameras[2], cameras[3])

    def loss_fn(p):
        world = _world_points(p["log_depth"], *cameras)
        return _alignment_loss(world, terms, *_pair_transforms(p, False, settings.base_scale))

    initial_loss = loss_fn(params)
    params = _optimize(loss_fn, params, settings)
    out = _result(params, pred, graph, terms, settings, cameras, *_pair_transforms(params, False, settings.base_scale), initial_loss)
    return dataclasses.replace(out, K=K, world_to_cam=world_to_cam)


def align_to_cameras(
    pred: PairPredictions, K: jax.Array, world_to_cam: jax.Array, settings: AlignmentSettings = AlignmentSettings()
) -> Alignment:
    """World point maps of 2-4 views aligned to known cameras ``K [V, 3, 3]``, ``world_to_cam [V, 4, 4]``.

    ``K`` is at the predictions' resolution (pixel centres at +0.5) with ``fx == fy`` (dust3r's
    single focal; ``fy`` is ignored). The returned cameras are the given ones, unchanged; the world
    frame and scale are theirs.
    """
    graph = _check_predictions(pred)
    v = graph.num_views
    if tuple(K.shape) != (v, 3, 3) or tuple(world_to_cam.shape) != (v, 4, 4):
        raise ValueError(
            f"known cameras must be K [{v}, 3, 3] and world_to_cam [{v}, 4, 4], got {tuple(K.shape)} and {tuple(world_to_cam.shape)}"
        )
    _check_finite(K, world_to_cam, what="known cameras")
    if _is_concrete(K) and not bool(jnp.all(K[:, 0, 0] > 0)):
        raise ValueError("known cameras must have positive focal lengths K[:, 0, 0]")
    return _align_to_cameras_jit(pred, jnp.asarray(K, jnp.float32), jnp.asarray(world_to_cam, jnp.float32), settings)


# ----------------------------------------------------------------------------------------------
# One view: dust3r pairs the image with itself and reads the pair directly (its PairViewer).

SELF_PAIRS = ((0, 1), (1, 0))


@functools.partial(jax.jit, static_argnames=("settings",))
def _single_view_jit(pred: PairPredictions, settings: AlignmentSettings) -> Alignment:
    height, width = pred.pts_i.shape[1:3]
    score = jnp.mean(pred.conf_i, axis=(1, 2)) * jnp.mean(pred.conf_j, axis=(1, 2))
    # View 0's own points: pair (0, 1)'s first map, or pair (1, 0)'s second (view 1 is the same image).
    points_cam = jnp.where(score[0] >= score[1], pred.pts_i[0], pred.pts_j[1])
    pp = jnp.array([[width / 2.0, height / 2.0]])
    focal = estimate_focal(points_cam, pp[0], settings.weiszfeld_iterations)[None]
    depth = points_cam[None, ..., 2]
    confidence = jnp.maximum(pred.conf_i[0], pred.conf_j[1])[None]
    zero = jnp.zeros((), pred.pts_i.dtype)
    return Alignment(
        K=make_intrinsics(focal, focal, pp[:, 0], pp[:, 1]),
        world_to_cam=jnp.eye(4)[None],
        points=depth_to_points(depth, focal, pp),
        depth=depth,
        confidence=confidence,
        valid=confidence > settings.min_confidence,
        loss=zero,
        initial_loss=zero,
    )


def align_single_view(pred: PairPredictions, settings: AlignmentSettings = AlignmentSettings()) -> Alignment:
    """Camera and point map of one image from its self-pair predictions ``pairs == ((0, 1), (1, 0))``.

    As dust3r's PairViewer: the more confident direction's points of view 0 in its own frame, focal by
    Weiszfeld, identity pose, points re-projected onto the camera rays from their depth. ``loss`` is 0.
    """
    if tuple(tuple(p) for p in pred.pairs) != SELF_PAIRS:
        raise ValueError(f"one view is aligned from its self-pairs {SELF_PAIRS}, got pairs {pred.pairs}")
    _check_predictions(pred)
    return _single_view_jit(pred, settings)
