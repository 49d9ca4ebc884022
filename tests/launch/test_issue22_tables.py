"""The issue-22 table's second seed differs from the first in the seeds only."""

import pathlib

from launch import table_runs

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_the_second_seed_table_changes_only_the_seeds(tmp_path):
    common0, runs0, conditions0 = table_runs.load_table(str(REPO / "configs/sweeps/issue22.py"))
    common1, runs1, conditions1 = table_runs.load_table(str(REPO / "configs/sweeps/issue22_seed1.py"))
    assert runs1 == runs0 and conditions1 == conditions0
    changed = {k for k in common0.keys() | common1.keys() if common0.get(k) != common1.get(k)}
    assert changed == {"config.seed", "config.data.shuffle_seed"}
    assert common1["config.seed"] != 0 and common1["config.data.shuffle_seed"] != 0
    overrides = [table_runs.run_overrides(common1, run, 10, tmp_path / "data") for run in runs1.values()]
    table_runs.sweep_overrides.check_overrides(str(REPO / "configs/synthetic.py"), overrides)
