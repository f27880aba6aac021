#!/usr/bin/env bash
# VNN-COMP tool interface: get ready for one instance. Usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Stops any lipverify run left over from an earlier instance and checks that both files are readable; exit 0
# when the instance can be run.
set -uo pipefail
if [ "${1:-}" != "v1" ]; then echo "expected the version string 'v1' as first argument, got '${1:-}'" >&2; exit 1; fi
if [ $# -ne 4 ]; then echo "usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB" >&2; exit 1; fi
pkill -f "lipverify verify" 2>/dev/null || true
for f in "$3" "$4"; do
  if [ ! -r "$f" ]; then echo "cannot read $f" >&2; exit 1; fi
done
exit 0
