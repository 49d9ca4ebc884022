"""Input ablations: the full model, then without position maps, without feature maps, without Plücker rays."""


def get_sweep() -> list[dict[str, bool]]:
    full = {"config.model.use_posmap": True, "config.model.use_features": True, "config.model.use_plucker": True}
    return [full] + [dict(full, **{f"config.model.use_{name}": False}) for name in ("posmap", "features", "plucker")]
