#!/usr/bin/env bash
# VNN-COMP tool interface: get ready for one instance. Usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Checks that both files are readable; exit 0 when the instance can be run. Nothing is left over from an earlier
# instance: run_instance.sh's search stops at its own deadline (so no process is killed here, which could hit
# other lipverify runs on the machine).
set -uo pipefail
if [ "${1:-}" != "v1" ]; then echo "expected the version string 'v1' as first argument, got '${1:-}'" >&2; exit 1; fi
if [ $# -ne 4 ]; then echo "usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB" >&2; exit 1; fi
for f in "$3" "$4"; do
  if [ ! -r "$f" ]; then echo "cannot read $f" >&2; exit 1; fi
done
exit 0
