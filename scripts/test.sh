#!/usr/bin/env bash
# The whole test suite: fetches what the tests need (model weights, through
# scripts/fetch-models.sh, when it exists), then runs every test of the workspace.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [ -x scripts/fetch-models.sh ]; then
  scripts/fetch-models.sh
fi
cargo test --workspace --all-targets "$@"
