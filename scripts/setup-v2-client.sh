#!/usr/bin/env bash
# Makes target/v2-client, a Python virtual environment with Triton's own HTTP client
# (tritonclient[http]), numpy and Pillow from PyPI, for the test that drives the /v2 routes
# with a client we did not write (tests/it/online.rs). Does nothing when it exists.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/target/v2-client"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import tritonclient.http, numpy, PIL" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "tritonclient[http]" numpy pillow
