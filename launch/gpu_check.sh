#!/usr/bin/env bash
# The GPU check on a fresh GPU machine: install what its image lacks from .gpu/ (made by
# launch/gpu_stage.sh), then `python -m nanugpt.bench gpu`, which writes gpu.json and gpu.md
# after every section and stops starting sections at its time budget (bench.budget_s).
#   launch/gpu_check.sh [bench.budget_s=480] [bench.out_dir=bench-gpu] [overrides...]
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import hydra, omegaconf" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/nanugpt-site .gpu/wheels/*.whl || exit 1
    export PYTHONPATH="/tmp/nanugpt-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
shakespeare=()
[ -f .gpu/tinyshakespeare.txt ] && shakespeare=("bench.shakespeare_path=$PWD/.gpu/tinyshakespeare.txt")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
exec python3 -m nanugpt.bench gpu "${shakespeare[@]}" "$@"
