"""Learning-rate sweep, half a decade apart around the default 3e-4."""


def get_sweep() -> list[dict[str, float]]:
    return [{"config.train.learning_rate": lr} for lr in (3e-5, 1e-4, 3e-4, 1e-3)]
