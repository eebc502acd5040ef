#!/usr/bin/env bash
# transforms="fused" against cuFFT on one GPU (docs/benchmarks.md, fourteenth session;
# docs/engine.md#the-transforms-reconstructortransforms).
#
# From the repository root on the GPU machine (the package need not be installed;
# NumPy, CuPy and a CUDA device, nothing else):
#
#     BLUESKY_PTYCHO_COMMIT=<commit> bash docs/gpu_transforms_ab.sh
#
# 1. docs/gpu_transforms_probe.py: the kernels against cuFFT (agreement, ms a pass);
# 2. the GPU tests of the transforms and of the CUDA operators;
# 3. `bluesky-ptycho bench` at 256 x 4096 (twice), 512 x 1024 and 128 x 4096 with
#    --transforms cufft and fused, alternated.
# Writes $OUT/transforms_probe.json, $OUT/tests.txt and $OUT/<size>x<frames>-<choice>-<run>.json
# ($OUT: ./out when unset).
set -uo pipefail

export OUT="${OUT:-out}"
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python}"

timeout 240 "$PYTHON" docs/gpu_transforms_probe.py || exit 1
timeout 200 "$PYTHON" -m pytest -q -m gpu tests/test_transforms.py tests/test_gpu.py 2>&1 \
  | tail -15 | tee "$OUT/tests.txt"

bench() {  # choice size frames iterations run
  timeout 150 "$PYTHON" -m bluesky_ptycho.cli bench --backend cupy --transforms "$1" \
    --frame-size "$2" --frames "$3" --iterations "$4" --json "$OUT/$2x$3-$1-$5.json" | tail -3
}
for run in 1 2; do
  for choice in cufft fused; do bench "$choice" 256 4096 50 "$run"; done
done
for choice in cufft fused; do bench "$choice" 512 1024 30 1; done
for choice in cufft fused; do bench "$choice" 128 4096 50 1; done
