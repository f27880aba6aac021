#!/usr/bin/env bash
# Set up lipverify in a virtual environment .venv inside the repo: idempotent, and instant when already done.
#   scripts/setup.sh        runtime dependencies
#   scripts/setup.sh dev    runtime + test dependencies
# torch is pinned to 2.13.0 first: on this machine kind that is the local CPU build; an unpinned torch would
# pull the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
stamp=.venv/.lipverify-setup
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

done_already() {
  [ -f "$stamp" ] || return 1
  read -r have_hash have_extras < "$stamp" || return 1
  [ "$have_hash" = "$want" ] || return 1
  [ -z "$extras" ] || [ "$have_extras" = "$extras" ] || return 1
  .venv/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('lipverify', 'verifier', 'frontends', 'training', 'torch', 'onnx', 'onnxruntime', 'networkx', 'click')))" 2>/dev/null
}

if done_already; then
  exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" --editable ".${extras:+[$extras]}"
echo "$want ${extras}" > "$stamp"
echo "lipverify set up in .venv${extras:+ (with $extras extras)}" >&2
