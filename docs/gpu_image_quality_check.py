"""Images as delivered on the GPU: a cold start with the defocus search (docs/benchmarks.md).

4,096 beamline-like frames of 256 x 256 (docs/gpu_scan.py: ``sim.sample.BEAMLINE_LIKE``,
a 3.5 mrad zone plate defocused by 4 waves at the pupil edge), simulated on the
GPU, the probe defocus searched, then 10 x 20 iterations with the NRMSE as
delivered after each block. Needs CuPy and a CUDA device; from the repository root::

    PYTHONPATH=. python docs/gpu_image_quality_check.py
"""

from __future__ import annotations

import time

import cupy as cp
from gpu_scan import cold_start_scan  # docs/ is on the path when run as a script

from bluesky_ptycho import Reconstructor
from bluesky_ptycho.calibration import search_probe_propagation
from bluesky_ptycho.metrics import snapshot_nrmse


def main() -> None:
    scan, config, _ = cold_start_scan()
    started = time.perf_counter()
    best_m, _ = search_probe_propagation(
        scan.frames, scan.x_motor, scan.y_motor, config, backend="cupy"
    )
    print(f"defocus search: {best_m * 1e6:.1f} um in {time.perf_counter() - started:.1f} s")
    rec = Reconstructor(config.replace(probe_propagation_m=best_m), backend="cupy")
    rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
    iterating_s = 0.0
    truth = (scan.sample.object, scan.sample.origin_m)
    while rec.iteration < 200:
        started = time.perf_counter()
        rec.iterate(20)
        cp.cuda.Device().synchronize()
        iterating_s += time.perf_counter() - started
        snap = rec.snapshot()
        print(
            f"{rec.iteration:4d} iterations, {iterating_s:6.1f} s iterating: NRMSE as delivered "
            f"{snapshot_nrmse(snap, *truth):.4f} "
            f"(ramp removed {snapshot_nrmse(snap, *truth, remove_ramp=True):.4f})",
            flush=True,
        )
    print("beam axis:", snap.metrics["beam_center_source"], snap.metrics["beam_center_measured_px"])


if __name__ == "__main__":
    main()
