#!/usr/bin/env bash
# The test command: prepares the environment (Docker engine with buildx,
# QEMU, Go 1.24.4, loopback registry with stand-in base images), lints, then
# runs every test. Integration tests fail, never skip, without Docker.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/dev-env.sh
ruff check .
exec python3 -m pytest -q "$@"
