#!/usr/bin/env bash
# scripts/bench-vs-onnx.sh [ARGS…] — the worker's models against PyTorch and ONNX Runtime on
# this machine, in one run: one table per model (framework × batch → images/s, the median of
# ≥ 5 runs of the forward pass alone, the same generated weights in all three, and IDunno's
# end-to-end figure with decoding), the ratios, and last
# `resnet50 batch 8 vs onnxruntime: <ratio>`.
# Installs PyTorch (CPU), torchvision, ONNX Runtime, onnx and onnxscript from PyPI into
# target/bench-venv if missing, and builds target/release/idunno. ARGS go to
# scripts/models/bench_vs_onnx.py (--archs, --batch-sizes, --threads, --runs, --repeats: every
# figure is the median of that many rounds measuring the three frameworks in turn, default 3,
# --no-end-to-end). A measuring tool, not a test: `cargo test` never runs it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$root/target/bench-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch, torchvision, onnxruntime, onnx, onnxscript' 2>/dev/null; then
  echo "bench-vs-onnx: installing PyTorch and ONNX Runtime into $venv (PyPI)…" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet torch torchvision onnxruntime onnx onnxscript numpy
fi
(cd "$root" && cargo build --release --quiet && cargo build --release --quiet -p idunno-models --example gen_weights --benches)
exec "$venv/bin/python" "$root/scripts/models/bench_vs_onnx.py" "$@"
