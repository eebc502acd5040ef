#!/usr/bin/env bash
# Live latency through the real callback on the GPU (docs/benchmarks.md,
# "Live latency through the callback"; what is timed: docs/cli.md#bench-live).
#
# A 10,000-frame 256 x 256 scan streamed at 2 kHz into PtychoCallback(backend="cupy").
# From the repository root on the GPU machine (the package need not be installed):
#
#     BLUESKY_PTYCHO_COMMIT=<commit> bash docs/gpu_live_latency.sh [more bench-live options]
#
# e.g. `... --snapshot-interval 0.25 --refine-iterations 30` for a second run.
# Needs NumPy, CuPy and a CUDA device, and event-model with its dependencies
# (jsonschema, attrs, referencing, rpds-py, jsonschema-specifications,
# typing-extensions); no Bluesky, ophyd or Tiled. Packages carried in a folder:
# name it in BLUESKY_PTYCHO_SITE (put on PYTHONPATH after the checkout).
# Writes $OUT/live-latency-cupy-256x10000.json ($OUT: ./out when unset).
set -euo pipefail

OUT="${OUT:-out}"
mkdir -p "$OUT"
export PYTHONPATH=".${BLUESKY_PTYCHO_SITE:+:$BLUESKY_PTYCHO_SITE}${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"

"$PYTHON" - <<'EOF'
import cupy
import event_model
import jsonschema  # noqa: F401

print(
    f"cupy {cupy.__version__}, {cupy.cuda.runtime.getDeviceCount()} CUDA device(s); "
    f"event-model {getattr(event_model, '__version__', '?')}"
)
EOF

"$PYTHON" -m bluesky_ptycho.cli bench-live --backend cupy --frames 10000 --frame-size 256 \
    --rate-hz 2000 --json "$OUT/live-latency-cupy-256x10000.json" "$@"
