"""Released Sapiens checkpoints -> :class:`~avat3r_jax.frontend.sapiens.Sapiens`.

Accepted (:func:`load_sapiens`): the pretrained (MAE) backbones as mmengine ``.pth`` files,
either a container ``{"state_dict": {...}, "meta": ...}`` or a bare state dict, with the backbone
under ``backbone.*`` (the MAE decoder ``neck.*`` and ``head.*`` are skipped) or without the prefix
(as the task configs' backbone-level ``Pretrained`` init of the released ``sapiens_*_clean.pth``
implies; the released files themselves were not at hand); or a ``.safetensors`` file with the same
key names. Not accepted: the TorchScript / ``torch.export`` files of Sapiens-Lite
(``*_torchscript.pt2``, ``*_bfloat16.pt2``: compiled programs, not state dicts) and the task
checkpoints (pose, segmentation, depth, normal), whose backbones drop the class token and pad the
patch convolution. The four released sizes (``0.3b``, ``0.6b``, ``1b``, ``2b``) are told apart by
width and depth; heads are not in the shapes, so any other size needs explicit settings.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avat3r_jax.frontend.checkpoints import CheckpointError, check_finite, check_keys, read_checkpoint
from avat3r_jax.frontend.sapiens import RELEASED, Sapiens, SapiensSettings

PREFIX = "backbone."
# Top-level modules of the MAE pretraining checkpoints that are not the backbone: decoder, loss head.
SKIPPED_PREFIXES = ("neck.", "head.")

# Flax parameter path (under the module) -> (mmengine key under ``backbone.``, torch layout -> ours).
Conversion = dict[tuple[str, ...], tuple[str, Callable[[Any], Any]]]


def _top_level(s: SapiensSettings) -> Conversion:
    tokens = 1 + s.pretrain_grid[0] * s.pretrain_grid[1]
    return {
        ("cls_token",): ("cls_token", lambda a: a.reshape(s.width)),
        ("pos_embed",): ("pos_embed", lambda a: a.reshape(tokens, s.width)),
        ("patch_embed", "kernel"): ("patch_embed.projection.weight", lambda a: a.transpose(2, 3, 1, 0)),  # [C,3,p,p]->[p,p,3,C]
        ("patch_embed", "bias"): ("patch_embed.projection.bias", lambda a: a),
        ("final_norm", "scale"): ("ln1.weight", lambda a: a),
        ("final_norm", "bias"): ("ln1.bias", lambda a: a),
    }


def _per_layer(s: SapiensSettings) -> Conversion:
    heads, dim, width = s.num_heads, s.head_dim, s.width
    return {
        ("norm1", "scale"): ("ln1.weight", lambda a: a),
        ("norm1", "bias"): ("ln1.bias", lambda a: a),
        ("attention", "qkv", "kernel"): ("attn.qkv.weight", lambda a: a.T.reshape(width, 3, heads, dim)),
        ("attention", "qkv", "bias"): ("attn.qkv.bias", lambda a: a.reshape(3, heads, dim)),
        ("attention", "out", "kernel"): ("attn.proj.weight", lambda a: a.T.reshape(heads, dim, width)),
        ("attention", "out", "bias"): ("attn.proj.bias", lambda a: a),
        ("norm2", "scale"): ("ln2.weight", lambda a: a),
        ("norm2", "bias"): ("ln2.bias", lambda a: a),
        ("mlp", "up", "kernel"): ("ffn.layers.0.0.weight", lambda a: a.T),
        ("mlp", "up", "bias"): ("ffn.layers.0.0.bias", lambda a: a),
        ("mlp", "down", "kernel"): ("ffn.layers.1.weight", lambda a: a.T),
        ("mlp", "down", "bias"): ("ffn.layers.1.bias", lambda a: a),
    }


def state_dict_shapes(settings: SapiensSettings) -> dict[str, tuple[int, ...]]:
    """``{mmengine key: torch shape}`` of the backbone, as the released code names it (``backbone.*``)."""
    s, c, p = settings, settings.width, settings.patch_size
    top = {
        "cls_token": (1, 1, c),
        "pos_embed": (1, 1 + s.pretrain_grid[0] * s.pretrain_grid[1], c),
        "patch_embed.projection.weight": (c, 3, p, p),
        "patch_embed.projection.bias": (c,),
        "ln1.weight": (c,),
        "ln1.bias": (c,),
    }
    layer = {
        "ln1.weight": (c,),
        "ln1.bias": (c,),
        "attn.qkv.weight": (3 * c, c),
        "attn.qkv.bias": (3 * c,),
        "attn.proj.weight": (c, c),
        "attn.proj.bias": (c,),
        "ln2.weight": (c,),
        "ln2.bias": (c,),
        "ffn.layers.0.0.weight": (s.mlp_width, c),
        "ffn.layers.0.0.bias": (s.mlp_width,),
        "ffn.layers.1.weight": (c, s.mlp_width),
        "ffn.layers.1.bias": (c,),
    }
    shapes = {PREFIX + key: shape for key, shape in top.items()}
    for i in range(s.depth):
        shapes.update({f"{PREFIX}layers.{i}.{key}": shape for key, shape in layer.items()})
    return shapes


def backbone_entries(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict with ``SKIPPED_PREFIXES`` dropped and anything else kept, keys under ``backbone.``.

    A bare backbone state dict (``cls_token``, ``layers.0.ln1.weight``, ...: what mmengine's
    ``Pretrained`` init of the backbone alone reads) gets the prefix; idempotent.
    """
    if "cls_token" in tensors and not any(key.startswith(PREFIX) for key in tensors):
        tensors = {PREFIX + key: value for key, value in tensors.items()}
    return {key: value for key, value in tensors.items() if not key.startswith(SKIPPED_PREFIXES)}


def infer_settings(tensors: Mapping[str, Any], *, what: str = "checkpoint") -> SapiensSettings:
    """The released size whose width and depth match the state dict's shapes (arrays or shapes)."""
    shapes = {key: tuple(getattr(value, "shape", value)) for key, value in backbone_entries(tensors).items()}
    if PREFIX + "cls_token" not in shapes or PREFIX + "pos_embed" not in shapes:
        sample = ", ".join(sorted(shapes)[:4]) or "none"
        raise CheckpointError(f"{what}: no backbone.cls_token / backbone.pos_embed: not a Sapiens checkpoint (keys: {sample}, ...)")
    width = shapes[PREFIX + "cls_token"][-1]
    layers = {int(m.group(1)) for key in shapes if (m := re.match(re.escape(PREFIX) + r"layers\.(\d+)\.", key))}
    depth = max(layers) + 1 if layers else 0
    match = [name for name, (w, d, _) in RELEASED.items() if (w, d) == (width, depth)]
    if not match:
        sizes = ", ".join(f"{n} = {w} x {d}" for n, (w, d, _) in RELEASED.items())
        raise CheckpointError(f"{what}: width {width} x depth {depth} is no released Sapiens size ({sizes}); pass settings=")
    return with_checkpoint_grid(SapiensSettings.released(match[0]), shapes)


def with_checkpoint_grid(settings: SapiensSettings, tensors: Mapping[str, Any]) -> SapiensSettings:
    """``settings`` with the pretraining grid of a square ``backbone.pos_embed [1, 1 + n^2, C]``, if there is one."""
    entry = tensors.get(PREFIX + "pos_embed")
    if entry is None:
        return settings
    length = tuple(getattr(entry, "shape", entry))[1]
    side = round(np.sqrt(length - 1))
    return dataclasses.replace(settings, pretrain_grid=(side, side)) if side * side + 1 == length else settings


def convert_state_dict(tensors: Mapping[str, Any], settings: SapiensSettings, *, what: str = "checkpoint") -> dict:
    """mmengine state dict (``backbone.*`` keys, torch layouts) -> the pure-dict state of :class:`Sapiens`.

    Every backbone key must be present with its shape (else one ``CheckpointError`` line naming the
    missing, unexpected and mismatched keys). Works on numpy arrays and, under ``jax.eval_shape``,
    on shapes alone.
    """
    entries = backbone_entries(tensors)
    check_keys(state_dict_shapes(settings), entries, what=f"Sapiens-{settings.name or 'custom'} {what}")
    state: dict = {}
    for path, (key, convert) in _top_level(settings).items():
        _assign(state, path, convert(entries[PREFIX + key]))
    for path, (key, convert) in _per_layer(settings).items():
        stacked = jnp.stack([convert(entries[f"{PREFIX}layers.{i}.{key}"]) for i in range(settings.depth)])
        _assign(state, ("blocks", *path), stacked)
    return state


def _assign(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def abstract_sapiens(settings: SapiensSettings) -> Sapiens:
    """The model with shapes only (``nnx.eval_shape``: nothing allocated)."""
    return nnx.eval_shape(lambda: Sapiens(settings, rngs=nnx.Rngs(0)))


def sapiens_from_state_dict(tensors: Mapping[str, np.ndarray], settings: SapiensSettings, *, what: str = "checkpoint") -> Sapiens:
    """A :class:`Sapiens` holding the weights of an mmengine state dict (checked, see :func:`convert_state_dict`)."""
    check_finite(backbone_entries(tensors), what=what)
    graphdef, state = nnx.split(abstract_sapiens(settings))
    pure = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), convert_state_dict(tensors, settings, what=what))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def load_sapiens(
    path: str | pathlib.Path,
    *,
    name: str | None = None,
    settings: SapiensSettings | None = None,
    dtype: str = "float32",
    attention_impl: str = "xla",
) -> Sapiens:
    """A Sapiens backbone from a local checkpoint file (see the module docstring for the formats).

    The size comes from ``settings``, else ``name`` (``'0.3b' | '0.6b' | '1b' | '2b'``), else the
    checkpoint's shapes; without ``settings`` the pretraining grid follows a square ``pos_embed``.
    ``dtype`` (``"float32"``/``"bfloat16"``) and ``attention_impl`` set the compute; parameters stay
    float32. Any problem is one ``CheckpointError`` line.
    """
    path = pathlib.Path(path)
    if path.suffix == ".pt2":
        raise CheckpointError(f"{path}: a Sapiens-Lite TorchScript/exported program, not a state dict; use the .pth checkpoint")
    tensors = backbone_entries(read_state_dict(path))
    what = f"checkpoint {path}"
    if settings is None:
        settings = SapiensSettings.released(name) if name is not None else infer_settings(tensors, what=what)
        settings = with_checkpoint_grid(settings, tensors)
    settings = dataclasses.replace(settings, dtype_name=jnp.dtype(dtype).name, attention_impl=attention_impl).validated()
    return sapiens_from_state_dict(tensors, settings, what=what)


def read_state_dict(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file, or of a ``.pth``: its ``state_dict`` entry, else the file itself.

    A ``.pth`` without a ``state_dict`` entry is read a second time as a bare state dict; if that
    fails too, the first error (naming the file's top-level keys) is raised.
    """
    if path.suffix == ".safetensors":
        return read_checkpoint(path).tensors
    try:
        return read_checkpoint(path, container="state_dict").tensors
    except CheckpointError as error:
        if "no 'state_dict' entry" not in str(error):
            raise
        try:
            return read_checkpoint(path).tensors
        except CheckpointError:
            raise error from None
