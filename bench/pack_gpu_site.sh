#!/usr/bin/env bash
# Pack the packages the GPU machine lacks (ray, simpy, pydantic, psutil and what they need there) into
# .gpu/site.tar.xz, for the `device` tool to carry (64 MiB a call: Ray is slimmed to what starts
# actors). On the GPU machine:
#   mkdir -p /tmp/site && tar -xJf .gpu/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
#   python bench/gpu_check.py --budget 420 --out $OUT/gpu-check
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms="$platforms --platform $p"
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
  -d "$work/wheels" ray==2.60.0 simpy pydantic pydantic-core annotated-types typing-inspection jsonschema \
  jsonschema-specifications referencing rpds-py psutil
mkdir -p "$work/site"
for w in "$work"/wheels/*.whl; do "$PY" -m zipfile -e "$w" "$work/site"; done
rm -rf "$work"/site/ray/{jars,rllib,data,serve,tune,train,llm,dashboard/client}
mkdir -p .gpu
tar -cJf .gpu/site.tar.xz -C "$work/site" .
du -h .gpu/site.tar.xz
