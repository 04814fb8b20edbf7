#!/usr/bin/env bash
# The whole test suite: fetches what the tests need (model weights, through
# scripts/fetch-models.sh; Triton's Python client for the /v2 tests, through
# scripts/setup-v2-client.sh), then runs every test of the workspace.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [ -x scripts/fetch-models.sh ]; then
  scripts/fetch-models.sh
fi
scripts/setup-v2-client.sh
cargo test --workspace --all-targets "$@"
