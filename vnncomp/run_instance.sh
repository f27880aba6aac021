#!/usr/bin/env bash
# VNN-COMP tool interface: decide one instance. Usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Writes RESULTS_FILE as the competition's scorer reads it: 'unsat' (the property holds), 'sat' followed by the
# counterexample ((X_0 v) ... (Y_0 v)), 'unknown' or 'timeout'. The search stops a few seconds before TIMEOUT
# (Python's start-up and the write count too). Exit 0 whenever a result was written; lipverify's own exit code
# (2 bad input, 3 internal error) otherwise.
set -uo pipefail
if [ "${1:-}" != "v1" ]; then echo "expected the version string 'v1' as first argument, got '${1:-}'" >&2; exit 1; fi
if [ $# -ne 6 ]; then echo "usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2; exit 1; fi
here="$(cd "$(dirname "$0")/.." && pwd)"
onnx_file="$3"
case "$onnx_file" in
  *.gz) plain="${onnx_file%.gz}"; [ -f "$plain" ] || gzip -dkf "$onnx_file"; onnx_file="$plain" ;;
esac
vnnlib_file="$4"
case "$vnnlib_file" in
  *.gz) plain="${vnnlib_file%.gz}"; [ -f "$plain" ] || gzip -dkf "$vnnlib_file"; vnnlib_file="$plain" ;;
esac
budget="$(python3 -c "import sys; t = float(sys.argv[1]); print(max(1.0, 0.95 * t - 3.0))" "$6")"
"$here/.venv/bin/lipverify" verify "$onnx_file" "$vnnlib_file" --timeout "$budget" --result "$5"
code=$?
case $code in
  0|1|4) exit 0 ;;
  *) exit $code ;;
esac
