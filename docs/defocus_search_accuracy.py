"""How well the defocus search finds a small defocus (docs/benchmarks.md, eighth session).

For each true defocus (in waves at the bright-field disc's edge, ``z theta^2 / (2
lambda)``; the default simulation's 60 um is 0.20 waves), simulate the default
256 x 256 scan (``simulate_scan(default_config(256), FRAMES, defocus_m=...)``),
then run :func:`bluesky_ptycho.calibration.calibrate` on its first 48 frames as
the callback's ``calibrate="defocus"`` does (``defocus_sign=1``), with the
default trial iterations and with more (``--hold-probe``: with the probe held
fixed in the trials, ``probe_hold_iterations`` = ``HELD``). Prints one line per
search: the distance found, its error in waves, and the three lowest trial
NLLs. Runs on the CPU in about a minute::

    PYTHONPATH=. python docs/defocus_search_accuracy.py [--hold-probe] [--backend cupy]
"""

from __future__ import annotations

import argparse
import inspect
import json
import time

from bluesky_ptycho.calibration import calibrate
from bluesky_ptycho.sim.sample import default_config, make_probe, simulate_scan

FRAMES = 400  # simulated; the search sees the first CALIBRATE_FRAMES
CALIBRATE_FRAMES = 48  # the callback's default calibrate_frames
WAVES = (0.1, 0.2, 0.5, 1.0)
TRIAL_ITERATIONS = (10, 20)  # 10: the search's default
HELD = 1000  # probe_hold_iterations with --hold-probe: longer than any trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--hold-probe", action="store_true")
    args = parser.parse_args()
    config = default_config(args.size)
    trial_changes = {"probe_hold_iterations": HELD} if args.hold_probe else {}
    semiangle = inspect.signature(make_probe).parameters["semiangle_rad"].default
    metres_per_wave = 2 * config.wavelength_m / semiangle**2
    rows = []
    for waves in WAVES:
        scan = simulate_scan(config, FRAMES, defocus_m=waves * metres_per_wave)
        held = slice(0, CALIBRATE_FRAMES)
        for iterations in TRIAL_ITERATIONS:
            started = time.perf_counter()
            found = calibrate(
                scan.frames[held], scan.x_motor[held], scan.y_motor[held],
                scan.config.replace(**trial_changes),
                orientation=False, defocus_sign=1, iterations=iterations, backend=args.backend,
            )  # fmt: skip
            found_m = found.config.probe_propagation_m
            best = sorted(found.summary["defocus_table"], key=lambda row: row[1])[:3]
            row = {
                "true_waves": waves,
                "true_um": round(waves * metres_per_wave * 1e6, 1),
                "trial_iterations": iterations,
                "probe_held": args.hold_probe,
                "found_um": round(found_m * 1e6, 1),
                "error_waves": round(found_m / metres_per_wave - waves, 2),
                "best_three": [(round(z * 1e6, 1), round(nll, 3)) for z, nll, _ in best],
                "seconds": round(time.perf_counter() - started, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
