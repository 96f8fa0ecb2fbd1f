#!/usr/bin/env bash
# Prepares, on the CPU machine, what scripts/gpu_check.sh carries to a lent GPU: .whl/ (the
# wheels a bare PyTorch image lacks, for its Python 3.12 on x86-64, at the versions this
# .venv runs) and .gpudata/cifar10/ (the 1000 test images and the first 14000 training
# images, which is what fits the lease's 64 MiB). Both folders are git-ignored here
# (.git/info/exclude).
#
#   scripts/gpu_prepare.sh [DATA_DIR]    (default: $ADVLS_DATA, then ../shared/data)
set -euo pipefail

DATA=${1:-${ADVLS_DATA:-../shared/data}}
PY=.venv/bin/python
for ignored in /.whl/ /.gpudata/; do
    grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >>.git/info/exclude
done

packages=(pydantic pydantic_core annotated-types typing-inspection typing_extensions typer
    click shellingham annotated-doc torchattacks)
pins=()
for name in "${packages[@]}"; do
    pins+=("$name==$($PY -m pip show "$name" | sed -n 's/^Version: //p')")
done
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${pins[@]}"

mkdir -p .gpudata/cifar10
cp "$DATA/cifar10/cifar10_test_first1000_uint8_hwc.npz" .gpudata/cifar10/
$PY - "$DATA/cifar10/cifar10_train_50000_uint8_hwc.npz" <<'PYEOF'
import sys

import numpy as np

with np.load(sys.argv[1]) as full:
    x, y = full["x"][:14000], full["y"][:14000]
np.savez(".gpudata/cifar10/cifar10_train_first14000_uint8_hwc.npz", x=x, y=y)
PYEOF
du -sh .whl .gpudata
