"""launch/tpu_pod.sh --dry-run: the printed gcloud commands carry every flag."""

import pathlib
import subprocess

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "launch" / "tpu_pod.sh"
POD = ["--name=pod1", "--zone=us-central2-b", "--project=proj", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]


def dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, timeout=30)


def remote_commands_are_valid_bash(line: str) -> bool:
    """Splits a printed command as bash would and syntax-checks its --command=... script."""
    check = 'eval "set -- $1"; for w in "$@"; do case $w in --command=*) bash -n -c "${w#--command=}" || exit 1;; esac; done'
    return subprocess.run(["bash", "-c", check, "_", line], capture_output=True, timeout=30).returncode == 0


def test_full_launch_prints_create_setup_and_train_on_all_workers():
    result = dry_run(
        *POD, "--config=configs/paper.py", "--workdir=gs://bucket/run1", "--extra-args=--config.train.num_steps=5 --config.seed=3", "--spot"
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    create, tar, scp, setup, train = lines
    assert create == (
        "gcloud compute tpus tpu-vm create pod1 --zone=us-central2-b --project=proj --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base --spot"
    )
    assert tar.startswith("tar -czf") and "--exclude=.git" in tar
    assert scp.startswith("gcloud compute tpus tpu-vm scp") and "--worker=all" in scp and "pod1:~/avat3r-jax.tar.gz" in scp
    assert setup.startswith("gcloud compute tpus tpu-vm ssh pod1 --zone=us-central2-b --project=proj --worker=all")
    assert "jax[tpu]" in setup and "gcsfs" in setup and "pip install -q -e ~/avat3r-jax" in setup
    assert train.startswith("gcloud compute tpus tpu-vm ssh pod1 --zone=us-central2-b --project=proj --worker=all")
    assert (
        "python3.12 -m launch.train --config=configs/paper.py --workdir=gs://bucket/run1 --distributed_auto "
        "--config.train.num_steps=5 --config.seed=3'" in train
    )
    assert remote_commands_are_valid_bash(setup) and remote_commands_are_valid_bash(train)
    assert result.stderr == ""


def test_single_actions_detach_and_quoting():
    result = dry_run(
        "--name=pod1",
        "--zone=z",
        "--workdir=gs://b/r",
        "--detach",
        "--extra-args=--config.data.name=a$b",
        "train",
        "logs",
        "stop",
        "delete",
    )
    assert result.returncode == 0, result.stderr
    train, logs, stop, delete = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert "--project" not in train and "create" not in result.stdout
    assert "nohup python3.12 -m launch.train --config=configs/synthetic.py --workdir=gs://b/r --distributed_auto" in train
    assert r"--config.data.name=a\$b" in train  # escaped for the remote shell.
    assert "> ~/avat3r-train.log 2>&1 < /dev/null &" in train
    assert remote_commands_are_valid_bash(train)
    assert logs.endswith("--worker=0 '--command=tail -n 200 -f ~/avat3r-train.log'")
    assert stop == "gcloud compute tpus tpu-vm stop pod1 --zone=z"
    assert delete == "gcloud compute tpus tpu-vm delete pod1 --zone=z --quiet"


def test_local_workdir_warns():
    result = dry_run("--name=p", "--zone=z", "--workdir=/tmp/run", "train")
    assert result.returncode == 0
    assert "not on gs://" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--zone=z", "up"], "--name is required"),
        (["--name=p", "up"], "--zone is required"),
        (["--name=p", "--zone=z", "train"], "--workdir is required"),
        (["--name=p", "--zone=z", "--workdir=gs://b", "--config=configs/absent.py", "train"], "config configs/absent.py not found"),
        (["--name=p", "--zone=z", "--bogus=1"], "unknown flag --bogus"),
        (["--name=p", "--zone=z", "launch"], "unknown action 'launch'"),
        (["--name=p", "--zone"], "flag --zone needs a value"),
    ],
)
def test_bad_flags_are_rejected(args, message):
    result = dry_run(*args)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("accelerator", "runtime"),
    [
        ("v4-32", "tpu-ubuntu2204-base"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v5p-256", "v2-alpha-tpuv5"),
        ("v6e-64", "v2-alpha-tpuv6e"),
    ],
)
def test_runtime_image_follows_the_accelerator_type(accelerator, runtime):
    result = dry_run("--name=p", "--zone=z", f"--accelerator-type={accelerator}", "up")
    assert result.returncode == 0, result.stderr
    (create,) = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert create == f"gcloud compute tpus tpu-vm create p --zone=z --accelerator-type={accelerator} --version={runtime}"


def test_explicit_version_wins_and_unknown_type_needs_one():
    result = dry_run("--name=p", "--zone=z", "--accelerator-type=v5p-8", "--version=custom-image", "up")
    assert result.returncode == 0 and "--version=custom-image" in result.stdout
    unknown = dry_run("--name=p", "--zone=z", "--accelerator-type=v9x-8", "up")
    assert unknown.returncode == 2 and "no default runtime for --accelerator-type=v9x-8: pass --version" in unknown.stderr
    assert dry_run("--name=p", "--zone=z", "--accelerator-type=v9x-8", "stop").returncode == 0  # only `up` needs an image
