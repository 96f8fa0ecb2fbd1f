#!/usr/bin/env bash
# One prepared run on a lent GPU (docs/benchmarks.md, "GPU"): the CUDA-marked tests, the
# ResNet-18 benchmark, and a first slice of paper-cifar-resnet through `advls reproduce
# --device cuda`. Everything it writes lands in $OUT (default runs/gpu-out): the test log, the
# benchmark's JSON, and the slice's report, store and evaluations as one archive.
#
# What it needs beside the working tree, prepared on the CPU machine by
# scripts/gpu_prepare.sh (both git-ignored):
#   .whl/      wheels of the packages the GPU image lacks (pydantic and its parts, typer,
#              click, torchattacks), installed into /tmp/site;
#   .gpudata/  cifar10/cifar10_train_first14000_uint8_hwc.npz (the first 14000 training
#              images: what fits the lease's 64 MiB) and the 1000 test images.
#
#   scripts/gpu_check.sh [total-seconds]    (default 540: the stages share what is left)
#
# DRY=1 PY=.venv/bin/python scripts/gpu_check.sh rehearses every stage on the CPU at toy sizes
# (no wheels, no GPU), so the script itself is checked before device time is spent on it.
set -uo pipefail

TOTAL=${1:-540}
START=$(date +%s)
OUT=${OUT:-runs/gpu-out}
WORK=runs/gpu
mkdir -p "$OUT" "$WORK"
left() { echo $((TOTAL - ($(date +%s) - START))); }

PY=${PY:-python3}
DRY=${DRY:-}
DEVICE=cuda
BENCH_ARGS=()
if [ -n "$DRY" ]; then
    DEVICE=cpu
    BENCH_ARGS=(--device cpu --rounds 1 --warmup 0 --train-batch 4 --attack-batch 4 --inner 1)
fi

if [ -z "$DRY" ] && compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PWD/src:/tmp/site"
else
    export PYTHONPATH="$PWD/src"
fi
export ADVLS_DATA="$PWD/.gpudata" PYTHONUNBUFFERED=1
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
$PY -c "import torch, advls; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0), 'advls', advls.__version__)" \
    | tee "$OUT/versions.txt"

echo "== 1. CUDA-marked tests ($(left) s left)"
timeout 170 $PY -m pytest -m cuda tests/test_cuda.py -n 4 -q -p no:cacheprovider \
    >"$OUT/cuda-tests.log" 2>&1
echo "pytest exit $?"
tail -n 15 "$OUT/cuda-tests.log"

echo "== 2. benchmark ($(left) s left)"
timeout 150 $PY benchmarks/bench_gpu.py "${BENCH_ARGS[@]}" >"$OUT/bench_gpu.json" 2>"$WORK/bench_gpu.log"
echo "bench exit $?"
cat "$WORK/bench_gpu.log"

echo "== 3. paper-cifar-resnet slice ($(left) s left)"
# The epochs the lease affords: what is left after the evaluation (about 900 forward+backward
# passes of 1000 images per run under the paper protocol, at the measured PGD rate) and a
# minute of process start-up and report, at the measured CE training rate; FGSM-AT's steps
# cost two.
$PY - "$(left)" "$OUT/bench_gpu.json" "$WORK/slice.yaml" "$DRY" <<'EOF' | tee "$OUT/slice-epochs.txt"
import json, math, sys
import yaml
left, bench_path, spec_path, dry = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
spec = yaml.safe_load(open("docs/results/gpu/paper-cifar-resnet-slice.yaml"))
images, runs, run_equivalents = 14000, 4, 5
try:
    results = json.load(open(bench_path))["results"]
    train_rate = results["training"]["ce_images_per_s"]
    pass_rate = 10 * results["pgd-10"]["ours_images_per_s"]
except (OSError, KeyError, ValueError):
    train_rate, pass_rate = 5000.0, 50000.0  # no benchmark: a cautious guess
evaluation = runs * 900 * 1000 / pass_rate
budget = left - evaluation - 60
epochs = max(2, min(30, math.floor(budget * train_rate / (images * run_equivalents))))
spec["train"]["epochs"] = epochs
if dry:  # the rehearsal: toy sizes, every stage of the real path
    spec["train"].update(epochs=1, train_subset=64)
    spec["evaluate"].update(n=4, batch_size=4)
yaml.safe_dump(spec, open(spec_path, "w"), sort_keys=False)
print(json.dumps({"seconds_left": left, "train_images_per_s": train_rate,
                  "attack_passes_per_s": pass_rate, "evaluation_s_estimate": evaluation,
                  "training_budget_s": budget, "epochs": epochs}))
EOF
SLICE="$WORK/slice"
timeout $(($(left) - 30)) $PY -m advls reproduce "$WORK/slice.yaml" --device "$DEVICE" --jobs 4 \
    --no-theory --out "$SLICE" --no-progress >"$WORK/slice.log" 2>&1
echo "reproduce exit $?"
if [ ! -f "$SLICE/report/report.md" ] && [ -f "$SLICE/results.db" ]; then
    # Killed at the limit: the report of the runs that finished.
    timeout 25 $PY -m advls report --store "$SLICE/results.db" --out "$SLICE/report" \
        >>"$WORK/slice.log" 2>&1
fi
tail -n 8 "$WORK/slice.log"
cp "$WORK/slice.log" "$OUT/slice.log"
(cd "$SLICE" 2>/dev/null && tar czf - report results.db artifacts/runs \
    $(ls artifacts/train/*/checkpoint.json 2>/dev/null)) >"$OUT/slice.tar.gz"
echo "== done in $(($(date +%s) - START)) s"
