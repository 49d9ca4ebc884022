"""The optimiser: AdamW with warm-up + cosine decay, global-norm clipping and a weight-decay mask.

Gradient accumulation is not part of it: ``avat3r_jax.train.step`` averages micro-batch gradients
in a ``lax.scan`` before one update, so every step of the schedule is one optimiser update.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from avat3r_jax.pytrees import path_names

# Leaf names never decayed whatever their rank (stacked layers give biases and scales rank 2).
NO_DECAY_NAMES = frozenset({"bias", "scale"})


def make_schedule(train_config: Any) -> optax.Schedule:
    """Learning rate per update: linear from 0 to ``learning_rate`` over ``warmup_steps``, then a
    cosine decay reaching ``end_learning_rate_factor * learning_rate`` at ``num_steps`` (held after)."""
    lr = float(train_config.learning_rate)
    warmup, total = int(train_config.warmup_steps), int(train_config.num_steps)
    end_factor = float(train_config.end_learning_rate_factor)
    if lr <= 0:
        raise ValueError(f"train.learning_rate must be > 0, got {lr}")
    if not 0 <= warmup < total:
        raise ValueError(f"train.warmup_steps must be in [0, num_steps={total}), got {warmup}")
    if not 0.0 <= end_factor <= 1.0:
        raise ValueError(f"train.end_learning_rate_factor must be in [0, 1], got {end_factor}")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=total, end_value=end_factor * lr
    )


def warmup_cosine(peak: float, end: float, warmup_steps, num_steps):
    """``make_schedule``'s shape with a horizon that may be traced (``warmup_steps``/``num_steps``
    arrays in the optimiser state, so a time budget can set them without recompiling the step)."""

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = peak * count / jnp.maximum(warmup_steps, 1.0)
        progress = jnp.clip((count - warmup_steps) / jnp.maximum(num_steps - warmup_steps, 1.0), 0.0, 1.0)
        return jnp.where(count < warmup_steps, warm, end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))

    return schedule


def _is_injected(node: Any) -> bool:
    """An ``inject_hyperparams`` state (``InjectHyperparamsState`` or, in newer optax, ``InjectStatefulHyperparamsState``)."""
    return hasattr(node, "hyperparams") and hasattr(node, "inner_state") and hasattr(node, "_replace")


def set_horizon(opt_state: Any, num_steps: int, warmup_steps: int) -> Any:
    """``opt_state`` of a ``time_budget`` optimiser with its schedule horizon replaced (same shapes
    and shardings, so the compiled step runs on)."""

    def replace(node):
        if not _is_injected(node):
            return node
        values = {"num_steps": num_steps, "warmup_steps": warmup_steps}
        hyperparams = {
            k: jax.device_put(jnp.asarray(v, node.hyperparams[k].dtype), node.hyperparams[k].sharding) for k, v in values.items()
        }
        return node._replace(hyperparams={**node.hyperparams, **hyperparams})

    return jax.tree.map(replace, opt_state, is_leaf=lambda node: _is_injected(node))


def decays(path: tuple[Any, ...], leaf: Any) -> bool:
    """Whether a parameter gets weight decay: matrices and conv kernels do; biases, norm scales,
    embeddings (leaf names containing ``embed``) and anything of rank < 2 do not."""
    names = path_names(path)
    leaf_name = names[-1].lower() if names else ""
    return len(leaf.shape) >= 2 and leaf_name not in NO_DECAY_NAMES and "embed" not in leaf_name


def weight_decay_mask(params: Any) -> Any:
    """A pytree of bools like ``params`` (dicts, ``nnx.State``; abstract shapes suffice): True = decay."""
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(train_config: Any, params: Any) -> optax.GradientTransformation:
    """``clip_by_global_norm(grad_clip_norm)`` (skipped when <= 0) then AdamW on ``make_schedule``.

    Weight decay follows ``weight_decay_mask``, evaluated on whatever tree the optimiser is given
    (so it does not matter whether leaves are wrapped in ``nnx.Variable``). ``params`` (abstract
    shapes suffice) is checked up front: with ``weight_decay > 0`` some parameter must decay.
    """
    weight_decay = float(train_config.weight_decay)
    if weight_decay < 0:
        raise ValueError(f"train.weight_decay must be >= 0, got {weight_decay}")
    if weight_decay > 0 and not any(jax.tree.leaves(weight_decay_mask(params))):
        raise ValueError(f"train.weight_decay={weight_decay} but no parameter qualifies for decay (see optimizer.decays)")
    make_adamw = lambda learning_rate: optax.adamw(
        learning_rate, b1=float(train_config.adam_b1), b2=float(train_config.adam_b2), weight_decay=weight_decay, mask=weight_decay_mask
    )
    schedule = make_schedule(train_config)  # checks the schedule's fields
    if float(train_config.get("time_budget", 0.0)) > 0:
        # The horizon lives in the optimiser state (``set_horizon``): a time budget fits it after timing some steps.
        peak, end = float(train_config.learning_rate), float(train_config.end_learning_rate_factor) * float(train_config.learning_rate)
        adamw = optax.inject_hyperparams(lambda num_steps, warmup_steps: make_adamw(warmup_cosine(peak, end, warmup_steps, num_steps)))(
            num_steps=float(train_config.num_steps), warmup_steps=float(train_config.warmup_steps)
        )
    else:
        adamw = make_adamw(schedule)
    clip_norm = float(train_config.grad_clip_norm)
    if clip_norm <= 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(clip_norm), adamw)
