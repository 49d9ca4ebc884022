"""configs/sweeps/issue22.py's table with a second seed: the same runs and held-out conditions, the
same generated dataset, another parameter initialisation, data order and input sampling."""

from configs.sweeps.issue22 import COMMON as SEED0_COMMON
from configs.sweeps.issue22 import get_conditions, get_runs

COMMON = {**SEED0_COMMON, "config.seed": 1, "config.data.shuffle_seed": 1}

__all__ = ["COMMON", "get_conditions", "get_runs"]
