#!/usr/bin/env bash
# docs/RESULTS.md's issue-22 tables in one GPU call (about 6 minutes):
#   launch/results_issue22.sh OUT_DIR [STEPS] [DEADLINE_S] [BENCH_S]
# 1. configs/sweeps/issue22.py through launch/run_table.py: one shared synthetic dataset, the
#    reference run alone for 250 steps (throughput baseline), then all 10 runs at once on the one GPU
#    (same steps, same seed), each evaluated on held-out subjects under every condition;
# 2. launch/bench_infer.py at the paper's size for model.cross_attn_from_layer = 0, 2, 4, 6 (one process).
# Results: OUT_DIR/table.json, table.md, infer.json, runs.tgz (each run's metrics and logs), log.txt.
set -u
out=${1:?usage: launch/results_issue22.sh OUT_DIR [STEPS] [DEADLINE_S] [BENCH_S]}
steps=${2:-400}
deadline=${3:-190}
bench_s=${4:-105}
work=/tmp/issue22
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import jax; print('jax', jax.__version__, jax.devices())"
timeout -k 15 $((deadline + 70)) python -m launch.run_table --config=configs/synthetic.py --table=configs/sweeps/issue22.py \
  --workdir="$work" --steps="$steps" --concurrency=10 --deadline_s="$deadline" --solo_steps=250
cp "$work"/table.json "$work"/table.md "$out"/ 2>/dev/null
timeout -k 15 "$bench_s" python -m launch.bench_infer --config=configs/paper.py --cross_attn_from_layers=0,2,4,6 \
  --frames=30 --warmup=5 --json="$out/infer.json"
tar czf "$out/runs.tgz" -C "$work" --exclude=data --exclude=checkpoints . 2>/dev/null
true
