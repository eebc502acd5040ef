"""Why a live scan's final image differs from the engine's alone (docs/benchmarks.md).

Streams the simulated 10,000 x 256 x 256 scan of ``bluesky-ptycho bench-live``
through the real callback (``refine_iterations=30``, 0.5 s snapshots) and logs
what the callback's worker asks of the engine: each ``add_frames`` (its frame
count) and each ``iterate``. The same schedule is then replayed on a fresh
``Reconstructor`` with the same frames, without the callback (no snapshots, no
rest, no copies kept for rollback), and its image judged the same way
(:func:`~bluesky_ptycho.metrics.snapshot_nrmse`). ``VARIANT`` arguments are
callback keywords for more streamed runs (``min_frames=500``). JSON to
``$OUT/live-schedule.json``. On a GPU machine, with the Bluesky wheels on the path::

    PYTHONPATH=. python docs/gpu_live_schedule.py [key=value[,key=value] ...]

``replay FILE [VARIANT ...]`` replays the schedules of such a JSON file without
the callback (no Bluesky packages needed), once per variant, with refinement
iterations continued to ``refine=N`` (default 60) and the NRMSE every
``EVERY`` of them (``gpu_convergence.errors``: global factor only, on the
device; the last row as delivered and with the ramp removed, on the host).
Variant items: ``ReconConfig`` numbers (``amplitude_iterations=60``),
``stall=X`` (the engine's ``AMPLITUDE_STALL_RELATIVE``), ``refine=N``, ``keep=1``
(the conjugate direction kept across additions that leave the canvas). JSON to
``$OUT/live-replay.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import cupy as cp
from gpu_convergence import errors

from bluesky_ptycho import Reconstructor
from bluesky_ptycho.engine import reconstructor
from bluesky_ptycho.metrics import snapshot_nrmse
from bluesky_ptycho.sim.sample import default_config, simulate_scan

FRAMES, SIZE, RATE_HZ, REFINE, SNAPSHOT_S = 10_000, 256, 2000.0, 30, 0.5
EVERY = 5
DEFAULT_STALL = reconstructor.AMPLITUDE_STALL_RELATIVE

#: per engine (the callback's warm-up makes its own): frames added (> 0), or 0 for
#: one iteration
schedules: dict[int, list[int]] = {}
_add, _iterate = Reconstructor.add_frames, Reconstructor.iterate


def _logged_add(self, frames, x, y):
    schedules.setdefault(id(self), []).append(len(frames))
    return _add(self, frames, x, y)


def _logged_iterate(self, n_iterations=1):
    schedules.setdefault(id(self), []).extend([0] * n_iterations)
    return _iterate(self, n_iterations)


def summary(steps: list[int]) -> dict:
    """Adds, iterations, frames at the first iteration, adds while iterating."""
    first = steps.index(0) if 0 in steps else len(steps)
    return {
        "adds": sum(1 for s in steps if s),
        "iterations": steps.count(0),
        "frames_at_first_iteration": sum(steps[:first]),
        "first_adds": [s for s in steps[: first + 40] if s][:20],
    }


def replay(steps: list[int], scan=None, config=None, keep: bool = False) -> Reconstructor:
    """The schedule on a fresh engine without the callback; ``keep``: the conjugate
    direction kept across additions that leave the canvas as it was."""
    scan = scan or simulate_scan(default_config(SIZE), FRAMES, xp=cp)  # bench-live's (seed 0)
    rec = Reconstructor(config or scan.config, backend="cupy")
    start = 0
    for step in steps:
        if step:
            part = slice(start, start + step)
            kept, shape = rec._previous, rec.object.shape
            _add(rec, scan.frames[part], scan.x_motor[part], scan.y_motor[part])
            if keep and kept is not None and rec.object.shape == shape:
                rec._previous = kept
            start += step
        else:
            _iterate(rec, 1)
    return rec


def replayed_nrmse(steps: list[int]) -> float:
    scan = simulate_scan(default_config(SIZE), FRAMES, xp=cp)
    rec = replay(steps, scan)
    return snapshot_nrmse(rec.snapshot(live=False), scan.sample.object, scan.sample.origin_m)


def replay_variants(path: str, variants: list[str]) -> None:
    """Each schedule of ``path`` cut at its last addition, then ``refine`` iterations."""
    scan = simulate_scan(default_config(SIZE), FRAMES, xp=cp)
    rows = []
    for recorded in json.load(open(path)):
        steps = recorded["schedule"]
        last_add = max(i for i, s in enumerate(steps) if s)
        for variant in variants or ["default"]:
            items = dict(item.split("=") for item in variant.split(",") if "=" in item)
            refine = int(items.pop("refine", 60))
            keep = bool(int(items.pop("keep", 0)))
            reconstructor.AMPLITUDE_STALL_RELATIVE = float(items.pop("stall", DEFAULT_STALL))
            config = scan.config.replace(
                **{k: float(v) if "." in v or "e" in v else int(v) for k, v in items.items()}
            )
            rec = replay(steps[: last_add + 1], scan, config, keep)
            trajectory = []
            for _ in range(refine // EVERY):
                rec.iterate(EVERY)
                trajectory.append(errors(rec, scan))
            trajectory[-1] = errors(rec, scan, True)
            models = "".join(h["noise_model"][0] for h in rec._history[-refine:])
            row = {
                "schedule": recorded["variant"],
                "variant": variant,
                "iterations_before_refinement": steps[: last_add + 1].count(0),
                "noise_models": models,
                "rows": trajectory,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            write("live-replay.json", rows)
            del rec
            cp.get_default_memory_pool().free_all_blocks()


def write(name: str, rows: list[dict]) -> None:
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, name), "w") as handle:
            json.dump(rows, handle, indent=1, default=str)


def main() -> None:
    if sys.argv[1:2] == ["replay"]:
        replay_variants(sys.argv[2], sys.argv[3:])
        return
    from bluesky_ptycho.tools.bench_live import bench_live

    Reconstructor.add_frames, Reconstructor.iterate = _logged_add, _logged_iterate
    variants = [""] + sys.argv[1:]
    rows = []
    for variant in variants:
        keywords = dict(item.split("=") for item in variant.split(",") if item)
        keywords = {k: int(v) if v.isdigit() else v for k, v in keywords.items()}
        schedules.clear()
        live = bench_live(
            FRAMES, SIZE, RATE_HZ, "cupy", REFINE, SNAPSHOT_S, **keywords
        )  # fmt: skip
        steps = next(s for s in schedules.values() if sum(s) == FRAMES)  # the scan's engine
        row = {
            "variant": variant or "default",
            "live": {k: v for k, v in dataclasses.asdict(live).items() if not k.startswith("_")},
            **summary(steps),
            "replayed_nrmse": replayed_nrmse(steps),
            "schedule": steps,
        }
        rows.append(row)
        shown = {k: v for k, v in row.items() if k not in ("live", "schedule")}
        print(json.dumps(shown), live.summary(), flush=True)
        write("live-schedule.json", rows)
        cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
