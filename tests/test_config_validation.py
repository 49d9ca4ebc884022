"""The one validation pass over a config: every schema field checked, bad values named in one line."""

import ml_collections
import pytest

from avat3r_jax.config import base_config
from avat3r_jax.config_validation import FIELD_CHECKS, ConfigValueError, config_problems, validate_config
from configs import paper, synthetic, synthetic_varied, tiny


def leaf_paths(node, prefix=""):
    for key, value in node.items():
        if hasattr(value, "items"):
            yield from leaf_paths(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_every_schema_field_has_a_check():
    assert sorted(leaf_paths(base_config())) == sorted(FIELD_CHECKS)


@pytest.mark.parametrize("module", [tiny, synthetic, synthetic_varied, paper])
def test_shipped_configs_are_valid(module):
    assert config_problems(module.get_config()) == []


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("train.learning_rate", float("nan"), "train.learning_rate must be a finite number in (0.0, inf]"),
        ("train.learning_rate", 0.0, "train.learning_rate must be a finite number"),
        ("train.learning_rate", float("inf"), "train.learning_rate must be a finite number"),
        ("data.num_target_views", 0, "data.num_target_views must be an integer >= 1, got 0"),
        ("data.batch_size", -1, "data.batch_size must be an integer >= 1, got -1"),
        ("train.adam_b2", 1.0, "train.adam_b2 must be a finite number in [0.0, 1.0)"),
        ("train.keep_checkpoints", 0, "train.keep_checkpoints must be an integer >= 1"),
        ("mesh.data", 0, "mesh.data must be -1 or an integer >= 1"),
        ("render.backend", "cuda", "render.backend must be one of"),
    ],
)
def test_bad_field_is_named_in_one_line(path, value, expected):
    config = tiny.get_config()
    section, key = path.split(".")
    config[section][key] = value
    with pytest.raises(ConfigValueError) as raised:
        validate_config(config)
    message = str(raised.value)
    assert expected in message and "\n" not in message, message


@pytest.mark.parametrize("background", ["red", ("red",), (1.0, 0.0), (1.0, float("nan"), 0.0), (2.0, 0.0, 0.0)])
def test_background_must_be_three_floats_in_unit_range(background):
    # ("red",) is what --config.render.background=red becomes (the string cast to a tuple).
    config = ml_collections.ConfigDict(tiny.get_config().to_dict(), type_safe=False)
    config.render.background = background
    assert any(problem.startswith("render.background must be three numbers") for problem in config_problems(config))


def test_relations_and_model_checks_after_the_field_checks():
    config = tiny.get_config()
    config.train.grad_accum_steps = 3
    config.model.num_heads = 3  # width 64 is not a multiple of 3
    problems = config_problems(config)
    assert any("multiple of train.grad_accum_steps" in p for p in problems), problems
    assert any("model.width (64) must be a multiple of model.num_heads (3)" in p for p in problems), problems


def test_several_problems_are_all_reported():
    config = tiny.get_config()
    config.data.batch_size = 0
    config.train.learning_rate = float("nan")
    assert len(config_problems(config)) == 2
