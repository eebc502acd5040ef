"""NRMSE against iterations with the line search on a sample of the frames (docs/engine.md).

Simulates a beamline-like scan (``sim.sample.BEAMLINE_LIKE``: phase gradient,
stopped defocused probe, low dose, hot pixels) of ``FRAMES`` frames of
``SIZE`` x ``SIZE``, then reconstructs it once per ``ReconConfig.line_search_frames``
value given (0: every frame), printing the NRMSE as delivered every 10 iterations,
the last Poisson NLL and the seconds taken. On a 2-core CPU a 1,024-frame
64 x 64 scan takes 40-100 s per value::

    PYTHONPATH=. python docs/line_search_sample.py SIZE FRAMES ITERATIONS LIMITS \\
        [STORAGE] [spiral|raster] [SEED]

e.g. ``... 64 1024 80 0,256,128,64 farfields raster``.
"""

from __future__ import annotations

import sys
import time

from bluesky_ptycho import Reconstructor
from bluesky_ptycho.metrics import snapshot_nrmse
from bluesky_ptycho.sim.sample import (
    BEAMLINE_LIKE,
    HOT_PIXEL_COUNTS,
    default_config,
    simulate_scan,
)


def main(argv: list[str]) -> None:
    size, n_frames, iterations = int(argv[0]), int(argv[1]), int(argv[2])
    limits = [int(value) for value in argv[3].split(",")]
    storage = argv[4] if len(argv) > 4 else "farfields"
    scan_kind = argv[5] if len(argv) > 5 else "spiral"
    seed = int(argv[6]) if len(argv) > 6 else 1
    scan = simulate_scan(
        default_config(size), n_frames=n_frames, seed=seed, scan=scan_kind, **BEAMLINE_LIKE
    )
    for limit in limits:
        config = scan.config.replace(
            saturation_counts=HOT_PIXEL_COUNTS, line_search_frames=limit, frame_storage=storage
        )
        rec = Reconstructor(config, backend="numpy")
        rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
        errors, started = [], time.perf_counter()
        for _ in range(iterations // 10):
            nll = rec.iterate(10)
            errors.append(snapshot_nrmse(rec.snapshot(), scan.sample.object, scan.sample.origin_m))
        seconds = time.perf_counter() - started
        print(
            f"limit {limit:5d} {storage} {scan_kind}: "
            + " ".join(f"{value:.4f}" for value in errors)
            + f"  nll {nll:.6g}  {seconds:.1f}s",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
