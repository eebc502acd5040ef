"""Convergence per iteration on the GPU: batch and live-like (docs/benchmarks.md).

For each case, simulate the scan once (``simulate_scan(default_config(size), n)``),
then run the engine and print the NRMSE every ``EVERY`` iterations:

* on the device every time: the global factor removed (no shift: the simulated
  positions are exact), over the covered region and over the well-covered
  region (coverage >= half its maximum);
* at the end, on the host: as delivered (shift and global factor removed,
  covered region: the test metric) and, as a diagnostic, with the best linear
  phase ramp also removed.

Variants: ``batch`` (all frames, then iterations), ``true_probe`` (batch from
the simulation's probe), ``live`` (frames in chunks of ``CHUNK`` with one
iteration after each, as the callback does at 2 kHz, then refinement
iterations) and ``live_keep`` (the same with the conjugate direction kept
across additions that leave the canvas as it was); ``VARIANT/key=value/...``
changes numeric ``ReconConfig`` settings (``stall=X``: the engine's
``AMPLITUDE_STALL_RELATIVE``; ``chunk=N``: frames per addition of a live variant;
``true_probe``: start from the simulation's probe, as in ``live/true_probe``;
``calibrate``: a live variant holds the first ``CALIBRATE_FRAMES`` frames back and
starts from the defocus they give, as the callback's ``calibrate="defocus"`` with
``defocus_sign=1``). Live
rows also give the NRMSE over the region only the last ``YOUNG_FRACTION`` of the
frames cover (``young``) and over the rest (``old``). From the repository root on a GPU
machine::

    PYTHONPATH=. python docs/gpu_convergence.py [SIZE:FRAMES:VARIANT[,VARIANT]:ITERATIONS ...]
"""

from __future__ import annotations

import json
import os
import sys
import time

import cupy as cp
import numpy as np

from bluesky_ptycho import Reconstructor
from bluesky_ptycho.calibration import calibrate
from bluesky_ptycho.engine import reconstructor
from bluesky_ptycho.metrics import COVERED_RELATIVE, crop_truth, object_nrmse
from bluesky_ptycho.sim.sample import default_config, simulate_scan

EVERY = 10
DEFAULT_STALL = reconstructor.AMPLITUDE_STALL_RELATIVE
CHUNK = 140
CALIBRATE_FRAMES = 48  # the callback's default calibrate_frames
#: live variants: the region covered only by this last fraction of the frames is
#: judged apart (``young`` and ``old`` in the rows)
YOUNG_FRACTION = 0.2
CASES = (
    "64:1000:batch:80",
    "128:4096:batch:80",
    "256:4096:batch,true_probe:100",
    "256:10000:live,live_keep:60",
)


def young_region(rec: Reconstructor, scan, n_old: int) -> cp.ndarray:
    """Canvas pixels the probe reaches (``COVERED_RELATIVE``) from none of the first
    ``n_old`` frames: what only the later frames cover (whole-pixel windows)."""
    cfg = rec.config
    centres = np.stack(
        [scan.y_motor * cfg.position_scale_m * cfg.y_direction / rec._pixel_m[0],
         scan.x_motor * cfg.position_scale_m * cfg.x_direction / rec._pixel_m[1]], axis=1
    )[:n_old]  # fmt: skip
    corners = np.floor(centres - np.array(cfg.frame_shape) // 2).astype(int) - rec._origin_px
    power = cp.abs(rec.probe) ** 2  # real space, centred on the window
    reached = cp.zeros(rec.object.shape, "float32")
    rows, cols = cfg.frame_shape
    for r, c in corners:
        reached[r : r + rows, c : c + cols] += power
    return reached < COVERED_RELATIVE * float(reached.max())


def errors(rec: Reconstructor, scan, full: bool = False, young: cp.ndarray | None = None) -> dict:
    """NRMSE rows: on the device, global factor only (no shift removed: the simulated
    positions are exact); ``full``: also the test metric and its diagnostics (host);
    with a ``young`` region (:func:`young_region`) also the NRMSE over its covered
    pixels and over the rest (the global factor of the whole covered region)."""
    snapshot_origin = tuple(float(o * p) for o, p in zip(rec._origin_px, rec._pixel_m, strict=True))
    truth = crop_truth(
        scan.sample.object, scan.sample.origin_m, rec.object.shape, snapshot_origin, rec._pixel_m
    )
    finite = cp.asarray(np.isfinite(truth))
    truth_dev = cp.asarray(np.nan_to_num(truth))
    coverage = rec._illumination / rec._illumination.max()
    row = {"iteration": rec.iteration}
    for name, region in (("quick", coverage >= COVERED_RELATIVE), ("quick_inner", coverage >= 0.5)):
        region &= finite
        recon, target = rec.object[region], truth_dev[region]
        factor = cp.vdot(recon, target) / cp.vdot(recon, recon)
        error = cp.linalg.norm(factor * recon - target) / cp.linalg.norm(target)
        row[name] = round(float(error), 4)
        if name == "quick" and young is not None:
            for part, where in (("young", young), ("old", ~young)):
                where = (coverage >= COVERED_RELATIVE) & finite & where
                rest = factor * rec.object[where] - truth_dev[where]
                share = cp.linalg.norm(rest) / cp.linalg.norm(truth_dev[where])
                row[part] = round(float(share), 4)
                row[f"{part}_pixels"] = int(where.sum())
    if full:
        snap = rec.snapshot(live=False)
        covered = (snap.coverage >= COVERED_RELATIVE) & np.isfinite(truth)
        truth = np.nan_to_num(truth)
        row["delivered"] = round(object_nrmse(snap.object, truth, covered), 4)
        row["ramp_removed"] = round(object_nrmse(snap.object, truth, covered, remove_ramp=True), 4)
    return row


def run(scan, variant: str, iterations: int) -> list[dict]:
    variant, *overrides = variant.split("/")
    stall = [item for item in overrides if item.startswith("stall=")]
    true_probe = variant == "true_probe" or "true_probe" in overrides
    calibrated = "calibrate" in overrides
    chunk = [int(item.split("=")[1]) for item in overrides if item.startswith("chunk=")]
    chunk = chunk[0] if chunk else CHUNK
    overrides = [
        item for item in overrides if "=" in item and not item.startswith(("stall=", "chunk="))
    ]
    reconstructor.AMPLITUDE_STALL_RELATIVE = (
        float(stall[0].split("=")[1]) if stall else DEFAULT_STALL
    )
    config = scan.config.replace(
        **{key: float(value) if "." in value or "e" in value else int(value)
           for key, value in (item.split("=") for item in overrides)}
    )  # fmt: skip
    if true_probe:
        config = config.replace(probe=scan.sample.probe)
    n = len(scan.x_motor)
    rows = []
    young = None
    edges = list(range(0, n, chunk))
    if calibrated:
        started = time.perf_counter()
        held = slice(0, CALIBRATE_FRAMES)
        frames = cp.asnumpy(scan.frames[held])
        found = calibrate(frames, scan.x_motor[held], scan.y_motor[held], config,
                          orientation=False, defocus_sign=1, backend="cupy")  # fmt: skip
        config = found.config
        rows.append({"calibration_s": round(time.perf_counter() - started, 2),
                     "probe_propagation_m": config.probe_propagation_m})  # fmt: skip
        edges = [0] + list(range(CALIBRATE_FRAMES, n, chunk))
    rec = Reconstructor(config, backend="cupy")
    if variant.startswith("live"):
        for start, stop in zip(edges, edges[1:] + [n], strict=True):
            part = slice(start, stop)
            kept = rec._previous
            shape = rec.object.shape
            rec.add_frames(scan.frames[part], scan.x_motor[part], scan.y_motor[part])
            if variant == "live_keep" and kept is not None and rec.object.shape == shape:
                rec._previous = kept
            rec.iterate(1)
        young = young_region(rec, scan, int(n * (1 - YOUNG_FRACTION)))
        rows.append(errors(rec, scan, young=young))
    else:
        rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
    started = time.perf_counter()
    for _ in range(iterations // EVERY):
        rec.iterate(EVERY)
        rows.append(errors(rec, scan, young=young))
    cp.cuda.Device().synchronize()
    poisson = [h["iteration"] for h in rec._history if h["noise_model"] == "poisson"]
    rows.append(
        {
            "seconds": round(time.perf_counter() - started, 2),
            "poisson_iterations": poisson,
            **errors(rec, scan, True, young),
        }
    )
    return rows


def main() -> None:
    results = []
    for case in sys.argv[1:] or CASES:
        size, n, variants, iterations = case.split(":")
        scan = simulate_scan(default_config(int(size)), int(n), xp=cp)
        for variant in variants.split(","):
            rows = run(scan, variant, int(iterations))
            result = {"case": case, "variant": variant, "rows": rows}
            results.append(result)
            print(json.dumps(result), flush=True)
            write(results)
        del scan
        cp.get_default_memory_pool().free_all_blocks()


def write(results: list[dict]) -> None:
    """All results so far to ``$OUT/convergence.json`` (kept when a later case is cut off)."""
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "convergence.json"), "w") as handle:
            json.dump({"commit": os.environ.get("BLUESKY_PTYCHO_COMMIT"), "results": results},
                      handle, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
