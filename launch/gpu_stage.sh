#!/usr/bin/env bash
# Stage what the GPU check needs on a GPU machine that has torch, tiktoken and numpy but no
# network and no Hydra: wheels of hydra-core, omegaconf and antlr4 (the three every entry point
# imports) and, for the baby-GPT section, tinyshakespeare. Everything goes to .gpu/ (git-ignored);
# copy or carry it along with the checkout.
#   launch/gpu_stage.sh [/path/to/tinyshakespeare.txt] [a folder that already holds the wheels]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/wheels
if [ -n "${2:-}" ]; then
    cp "$2"/*.whl .gpu/wheels/
else  # pure-Python wheels, built from sdists where PyPI has no wheel (antlr4 4.9.3)
    python3 -m pip wheel -q --no-deps -w .gpu/wheels "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" "antlr4-python3-runtime==4.9.3"
fi
if [ -n "${1:-}" ]; then
    cp "$1" .gpu/tinyshakespeare.txt
fi
ls -l .gpu .gpu/wheels
