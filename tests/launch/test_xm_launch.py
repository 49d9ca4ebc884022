"""launch/xm_launch.py: sweep expansion, override checks, and --dry-run without xmanager."""

import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from launch import sweep_overrides, xm_launch

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_shipped_sweeps_expand_and_fit_every_config():
    lrs = xm_launch.load_sweep(str(REPO / "configs/sweeps/lr_sweep.py"))
    assert [o["config.train.learning_rate"] for o in lrs] == [3e-5, 1e-4, 3e-4, 1e-3]
    ablations = xm_launch.load_sweep(str(REPO / "configs/sweeps/ablations.py"))
    turned_off = [sorted(k for k, v in o.items() if v is False) for o in ablations]
    assert turned_off == [[], ["config.model.use_posmap"], ["config.model.use_features"], ["config.model.use_plucker"]]
    for config in ("tiny", "synthetic", "paper"):
        xm_launch.check_overrides(str(REPO / f"configs/{config}.py"), lrs + ablations)


def test_printed_overrides_parse_back_through_config_flags():
    overrides = {
        "config.train.learning_rate": 1e-4,
        "config.model.use_plucker": False,
        "config.train.num_steps": 7,
        "config.data.name": "heads v2",
        "config.render.background": (0.0, 0.5, 1.0),
    }
    config_path = str(REPO / "configs/tiny.py")
    args = xm_launch.train_args(config_path, "runs/x/3", overrides)
    assert args[:4] == ["-m", "launch.train", f"--config={config_path}", "--workdir=runs/x/3"]
    argv = ["train", *args[2:3], *args[4:]]  # launch.train's --config and overrides (its --workdir is its own flag).
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    assert config.train.learning_rate == 1e-4 and config.model.use_plucker is False and config.train.num_steps == 7
    assert config.data.name == "heads v2" and tuple(config.render.background) == (0.0, 0.5, 1.0)


def write_sweep(tmp_path, body: str) -> str:
    path = tmp_path / "sweep.py"
    path.write_text(body)
    return str(path)


def test_bad_sweeps_are_rejected(tmp_path):
    config = str(REPO / "configs/tiny.py")
    sweep = xm_launch.load_sweep(
        write_sweep(tmp_path, "def get_sweep():\n    return [{'config.seed': 1}, {'config.train.learnin_rate': 1.0}]\n")
    )
    with pytest.raises(ValueError, match=r"work unit 2: .*learnin_rate.*Did you mean"):
        xm_launch.check_overrides(config, sweep)
    sweep = xm_launch.load_sweep(write_sweep(tmp_path, "def get_sweep():\n    return [{'config.train.num_steps': 1.5}]\n"))
    with pytest.raises(ValueError, match=r"work unit 1: .*cannot be casted"):
        xm_launch.check_overrides(config, sweep)
    with pytest.raises(ValueError, match=r"must look like 'config\.train\.learning_rate'"):
        xm_launch.load_sweep(write_sweep(tmp_path, "def get_sweep():\n    return [{'train.seed': 1}]\n"))
    with pytest.raises(ValueError, match="non-empty list of dicts"):
        xm_launch.load_sweep(write_sweep(tmp_path, "def get_sweep():\n    return []\n"))
    with pytest.raises(ValueError, match="no get_sweep"):
        xm_launch.load_sweep(write_sweep(tmp_path, "SWEEP = []\n"))
    with pytest.raises(ValueError, match="does not exist"):
        xm_launch.load_sweep(str(tmp_path / "absent.py"))
    with pytest.raises(ValueError, match="unsupported value"):
        sweep_overrides.format_override("config.seed", None)


def run_launcher(*args: str, pythonpath: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pythonpath, str(REPO)])))
    return subprocess.run([sys.executable, "-m", "launch.xm_launch", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_dry_run_prints_work_units_without_importing_xmanager(tmp_path):
    # A poisoned `xmanager` package first on the path: importing it would fail the run.
    (tmp_path / "xmanager").mkdir()
    (tmp_path / "xmanager" / "__init__.py").write_text("raise RuntimeError('xmanager was imported')\n")
    result = run_launcher(
        "--config=configs/tiny.py", "--sweep=configs/sweeps/lr_sweep.py", "--workdir=runs/lr/", "--dry-run", pythonpath=str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "work unit 1: python -m launch.train --config=configs/tiny.py --workdir=runs/lr/1 --config.train.learning_rate=3e-05",
        "work unit 2: python -m launch.train --config=configs/tiny.py --workdir=runs/lr/2 --config.train.learning_rate=0.0001",
        "work unit 3: python -m launch.train --config=configs/tiny.py --workdir=runs/lr/3 --config.train.learning_rate=0.0003",
        "work unit 4: python -m launch.train --config=configs/tiny.py --workdir=runs/lr/4 --config.train.learning_rate=0.001",
    ]


def test_launch_without_xmanager_says_how_to_install(tmp_path):
    (tmp_path / "xmanager").mkdir()
    (tmp_path / "xmanager" / "__init__.py").write_text("raise ImportError('no xmanager here')\n")
    result = run_launcher(
        "--config=configs/synthetic.py", "--sweep=configs/sweeps/ablations.py", "--workdir=runs/abl", pythonpath=str(tmp_path)
    )
    assert result.returncode == 1
    assert "pip install -e '.[xm]'" in result.stderr
    bad = run_launcher("--config=configs/synthetic.py", "--sweep=configs/sweeps/absent.py", "--workdir=runs/abl", "--dry-run")
    assert bad.returncode == 1 and "sweep file 'configs/sweeps/absent.py' does not exist" in bad.stderr
