"""Shared fixtures: the tiny synthetic dataset (configs/tiny.py), generated once per test session."""

import pathlib

import pytest

from configs import tiny
from data_pipelines import synthetic


@pytest.fixture(scope="session")
def tiny_config():
    return tiny.get_config()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_config) -> pathlib.Path:
    """4 subjects x 3 frames x 4 cameras at 32x32: train 2 subjects x 2 frames, 1 held-out frame each,
    1 validation and 1 test subject."""
    return synthetic.ensure_dataset(tiny_config.data, tmp_path_factory.mktemp("data") / "tiny")
