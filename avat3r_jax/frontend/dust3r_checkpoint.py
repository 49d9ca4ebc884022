"""Released DUSt3R checkpoints -> :class:`~avat3r_jax.frontend.dust3r.Dust3r`.

``load_dust3r`` reads the released checkpoint (``DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth``, or its
weights as ``.safetensors``) from a local path; every key is mapped or the load fails naming it.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avat3r_jax.frontend.checkpoints import Checkpoint, CheckpointError, check_finite, check_keys, read_checkpoint
from avat3r_jax.frontend.dust3r import Dust3r, Dust3rSettings
from avat3r_jax.sharding import parameter_shardings

# How a PyTorch tensor becomes a Flax parameter, and the PyTorch shape of a Flax parameter shape:
# (to_flax(array, flax_shape, module), torch_shape(flax_shape, module)).
_Kind = tuple[Callable[[np.ndarray, tuple, Any], np.ndarray], Callable[[tuple, Any], tuple]]
_KINDS: dict[str, _Kind] = {
    # nn.Linear [out, in] -> Dense kernel [*in_features, *out_features]
    "linear": (
        lambda a, shape, m: a.T.reshape(shape),
        lambda shape, m: (math.prod(shape[len(m.in_features) :]), math.prod(shape[: len(m.in_features)])),
    ),
    "vector": (lambda a, shape, m: a.reshape(shape), lambda shape, m: (math.prod(shape),)),
    # nn.Conv2d [out, in, kh, kw] -> [kh, kw, in, out] (also the patch embedding's Dense kernel [p, p, 3, out])
    "conv": (lambda a, shape, m: a.transpose(2, 3, 1, 0), lambda shape, m: (shape[3], shape[2], shape[0], shape[1])),
    # 1x1 nn.Conv2d [out, in, 1, 1] -> Dense kernel [in, out]
    "conv1x1": (lambda a, shape, m: a[:, :, 0, 0].T, lambda shape, m: (shape[1], shape[0], 1, 1)),
    # nn.ConvTranspose2d [in, out, k, k] (kernel = stride) -> PatchUpsample kernel [in, k, k, out]
    "conv_transpose": (lambda a, shape, m: a.transpose(0, 2, 3, 1), lambda shape, m: (shape[0], shape[3], shape[1], shape[2])),
}


@dataclasses.dataclass(frozen=True)
class _Entry:
    torch_key: str
    path: tuple[str | int, ...]  # attribute path of the Flax parameter
    kind: str


def _layout(s: Dust3rSettings) -> tuple[list[_Entry], dict[str, tuple[tuple[int, ...], str]], dict[str, str]]:
    """Every state-dict key: (loaded entries, ``{unused key: (shape, why)}``, ``{alias key: the key it duplicates}``)."""
    entries: list[_Entry] = []

    def linear(key: str, *path) -> None:
        entries.extend([_Entry(f"{key}.weight", (*path, "kernel"), "linear"), _Entry(f"{key}.bias", (*path, "bias"), "vector")])

    def norm(key: str, *path) -> None:
        entries.extend([_Entry(f"{key}.weight", (*path, "scale"), "vector"), _Entry(f"{key}.bias", (*path, "bias"), "vector")])

    def conv(key: str, *path, kind: str = "conv", bias: bool = True) -> None:
        entries.append(_Entry(f"{key}.weight", (*path, "kernel"), kind))
        if bias:
            entries.append(_Entry(f"{key}.bias", (*path, "bias"), "vector"))

    def mlp(key: str, *path) -> None:
        linear(f"{key}.fc1", *path, "fc1")
        linear(f"{key}.fc2", *path, "fc2")

    conv("patch_embed.proj", "patch_embed")
    for k in range(s.enc_depth):
        key, path = f"enc_blocks.{k}", ("enc_blocks", k)
        norm(f"{key}.norm1", *path, "norm1")
        linear(f"{key}.attn.qkv", *path, "attn", "qkv")
        linear(f"{key}.attn.proj", *path, "attn", "proj")
        norm(f"{key}.norm2", *path, "norm2")
        mlp(f"{key}.mlp", *path, "mlp")
    norm("enc_norm", "enc_norm")
    linear("decoder_embed", "decoder_embed")
    for decoder in ("dec_blocks", "dec_blocks2"):
        for k in range(s.dec_depth):
            key, path = f"{decoder}.{k}", (decoder, k)
            for name in ("norm1", "norm_y", "norm2", "norm3"):
                norm(f"{key}.{name}", *path, name)
            linear(f"{key}.attn.qkv", *path, "attn", "qkv")
            linear(f"{key}.attn.proj", *path, "attn", "proj")
            for name in ("projq", "projk", "projv", "proj"):
                linear(f"{key}.cross_attn.{name}", *path, "cross_attn", name)
            mlp(f"{key}.mlp", *path, "mlp")
    norm("dec_norm", "dec_norm")
    aliases: dict[str, str] = {}
    for head in ("head1", "head2"):
        key = f"downstream_{head}.dpt"
        for k in range(4):
            conv(f"{key}.act_postprocess.{k}.0", head, "project", k, kind="conv1x1")
            conv(f"{key}.scratch.layer_rn.{k}", head, "layer_rn", k, bias=False)
            aliases[f"{key}.scratch.layer{k + 1}_rn.weight"] = f"{key}.scratch.layer_rn.{k}.weight"  # one module, two names
            fusion = (head, "refinenet", k)
            for unit in ("resConfUnit1", "resConfUnit2"):
                for name in ("conv1", "conv2"):
                    conv(f"{key}.scratch.refinenet{k + 1}.{unit}.{name}", *fusion, unit, name)
            conv(f"{key}.scratch.refinenet{k + 1}.out_conv", *fusion, "out_conv", kind="conv1x1")
        conv(f"{key}.act_postprocess.0.1", head, "upsample4", kind="conv_transpose")
        conv(f"{key}.act_postprocess.1.1", head, "upsample2", kind="conv_transpose")
        conv(f"{key}.act_postprocess.3.1", head, "downsample2")
        conv(f"{key}.head.0", head, "head_conv1")
        conv(f"{key}.head.2", head, "head_conv2")
        conv(f"{key}.head.4", head, "head_out", kind="conv1x1")
    unused = {"mask_token": ((1, 1, s.dec_width), "CroCo pretraining's mask token; DUSt3R's forward pass never reads it")}
    return entries, unused, aliases


def _parent(model: nnx.Module, path: tuple[str | int, ...]) -> Any:
    node: Any = model
    for step in path[:-1]:
        node = node[step] if isinstance(step, int) else getattr(node, step)
    return node


def torch_key_shapes(model: Dust3r) -> dict[str, tuple[int, ...]]:
    """The PyTorch state dict's ``{key: shape}`` that ``model`` (concrete or from ``nnx.eval_shape``) loads.

    Also checks that the key layout covers every parameter of ``model`` exactly once.
    """
    entries, unused, aliases = _layout(model.settings)
    params = {tuple(path) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Param)}
    mapped = [entry.path for entry in entries]
    if set(mapped) != params or len(mapped) != len(params):
        missing = sorted(map(str, params - set(mapped)))[:4]
        raise AssertionError(f"DUSt3R key layout and module disagree: unmapped parameters {missing}")
    shapes = {}
    for entry in entries:
        variable = getattr(_parent(model, entry.path), entry.path[-1])
        shapes[entry.torch_key] = _KINDS[entry.kind][1](tuple(variable.shape), _parent(model, entry.path))
    shapes |= {alias: shapes[original] for alias, original in aliases.items()}
    shapes |= {key: shape for key, (shape, _) in unused.items()}
    return shapes


def settings_from_checkpoint(checkpoint: Checkpoint) -> Dust3rSettings:
    """Settings from a ``.pth``'s ``args.model`` or a ``.safetensors`` header's ``model`` entry."""
    args = checkpoint.metadata.get("args")
    text = args.get("model") if isinstance(args, dict) else checkpoint.metadata.get("model")
    if not isinstance(text, str):
        raise CheckpointError(
            f"{checkpoint.path}: no args.model (model constructor string) to read the settings from; pass settings= explicitly"
        )
    return Dust3rSettings.from_model_args(text)


def load_dust3r(
    path: str | pathlib.Path,
    *,
    dtype: Any = None,
    settings: Dust3rSettings | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Dust3r:
    """DUSt3R from a local ``.pth`` (``{'model': state_dict, 'args': Namespace}``) or ``.safetensors``.

    ``settings``: None reads them from the checkpoint's ``args.model``. ``dtype``: the encoder/decoder
    compute dtype (None: the settings', float32 by default); parameters stay float32. ``mesh``: place the parameters sharded
    by their logical axis names. Raises ``CheckpointError`` (one line) for an unreadable file, a
    checkpoint of another model, missing/unexpected keys, wrong shapes or non-finite weights.
    """
    checkpoint = read_checkpoint(path, container="model")
    settings = settings or settings_from_checkpoint(checkpoint)
    settings = settings if dtype is None else dataclasses.replace(settings, dtype=dtype)
    model = nnx.eval_shape(lambda: Dust3r(settings, rngs=nnx.Rngs(0)))
    what = f"DUSt3R checkpoint {checkpoint.path}"
    check_keys(torch_key_shapes(model), checkpoint.tensors, what=what)
    check_finite(checkpoint.tensors, what=what)
    entries, _, aliases = _layout(settings)
    differing = [
        alias for alias, original in aliases.items() if not np.array_equal(checkpoint.tensors[alias], checkpoint.tensors[original])
    ]
    if differing:
        raise CheckpointError(f"{what}: {differing[0]} differs from {aliases[differing[0]]} (the same PyTorch module under two names)")
    for entry in entries:
        parent = _parent(model, entry.path)
        variable = getattr(parent, entry.path[-1])
        value = _KINDS[entry.kind][0](checkpoint.tensors[entry.torch_key], tuple(variable.shape), parent)
        variable.set_value(jnp.asarray(np.ascontiguousarray(value, dtype=np.float32)))
    if mesh is not None:
        state = nnx.state(model, nnx.Param)
        nnx.update(model, jax.device_put(state, parameter_shardings(state, mesh)))
    return model
