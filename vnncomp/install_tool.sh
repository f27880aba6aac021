#!/usr/bin/env bash
# VNN-COMP tool interface: install lipverify (its .venv in the repo; idempotent). Usage: install_tool.sh v1
set -euo pipefail
if [ "${1:-}" != "v1" ]; then echo "expected the version string 'v1' as first argument, got '${1:-}'" >&2; exit 1; fi
cd "$(dirname "$0")/.."
scripts/setup.sh
