"""``bench-live``: frame -> snapshot latency through the real callback (NumPy, tiny scan)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from subprocess_support import run_python

from bluesky_ptycho.tools.bench_live import (
    LiveBench,
    bench_live,
    frame_latencies_s,
    option_flags,
)

#: 300 frames of 64 x 64 at 500 Hz, 30 refinement iterations: NRMSE 0.021-0.027 as delivered
#: in three runs on a loaded 2-core CPU (2026-12-01); with 18 refinement iterations 0.109,
#: and the engine alone is at 0.29 after 10 iterations of this scan, so a reconstruction
#: that loses a third of its iterations (or its geometry) fails this.
TARGET_NRMSE = 0.05
REFINE = 30
#: packages the GPU host does not have; the benchmark must run without them
ABSENT = ("bluesky", "ophyd", "ophyd_async", "tiled", "databroker", "bluesky_tiled_plugins")


def test_latency_is_first_snapshot_that_includes_the_frame():
    arrivals = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    # snapshots at 1.5 s (2 frames), 2.5 s (2 frames), 3.5 s (4 frames); frame 5 never
    latency = frame_latencies_s(arrivals, np.array([1.5, 2.5, 3.5]), np.array([2, 2, 4]))
    np.testing.assert_allclose(latency[:4], [1.5, 0.5, 1.5, 0.5])
    assert math.isnan(latency[4])
    with pytest.raises(ValueError, match="decrease"):
        frame_latencies_s(arrivals, np.array([1.0, 2.0]), np.array([3, 2]))


@pytest.fixture(scope="module")
def measured() -> LiveBench:
    return bench_live(
        n_frames=300,
        frame_size=64,
        rate_hz=500.0,
        backend="numpy",
        refine_iterations=REFINE,
        snapshot_interval_s=0.2,
    )


def test_every_frame_reaches_a_snapshot(measured):
    assert measured.exit_status == "success", measured.reason
    assert measured.frames_sent == measured.frames_in_final == 300
    assert measured.frames_lost == 0 and not measured.as_dict()["any_frame_lost"]
    assert measured.live_snapshots >= 1
    assert measured.iterations_after_stop == REFINE and measured.refine_iterations == REFINE
    assert measured.iterations_during_scan >= 0
    assert measured.backend == "numpy"


def test_latencies_are_measured(measured):
    values = [
        measured.latency_min_s,
        measured.latency_median_s,
        measured.latency_p90_s,
        measured.latency_max_s,
    ]
    assert all(math.isfinite(v) for v in values), values
    # causality: no snapshot may count a frame before it was handed over
    assert 0 < values[0] <= values[1] <= values[2] <= values[3]
    assert math.isfinite(measured.stop_to_final_s) and measured.stop_to_final_s > 0
    # pacing: never faster than asked (it may fall behind on a loaded host)
    assert 0 < measured.send_rate_hz <= 1.01 * measured.rate_hz
    assert 0 < measured.handoff_median_s <= measured.handoff_max_s


def test_final_image_as_delivered(measured):
    assert measured.final_nrmse <= TARGET_NRMSE


def test_result_round_trips_through_json(measured):
    loaded = json.loads(json.dumps(measured.as_dict()))
    names = {f.name for f in dataclasses.fields(LiveBench)}
    assert LiveBench(**{k: v for k, v in loaded.items() if k in names}) == measured
    assert loaded["date"] and loaded["commit"] and loaded["device"]
    assert loaded["command"].startswith("bluesky-ptycho bench-live --frames 300")


def test_recorded_command_gives_the_callback_options_again(monkeypatch):
    """Flags -> the callback keywords bench-live passes on -> the flags it records."""
    from bluesky_ptycho.cli import build_parser
    from bluesky_ptycho.commands import bench_live as command
    from bluesky_ptycho.tools import bench_live as tool

    flags = (
        " --duty-cycle 0.5 --frame-storage stacks --line-search-frames 512 --calibrate defocus"
        " --defocus-sign -1"
        " --refine-seconds 2.6"
    )
    passed = {}

    def record(**keywords):
        passed.update(keywords)
        raise SystemExit  # the options are what this test is about, not the run

    monkeypatch.setattr(tool, "bench_live", record)
    with pytest.raises(SystemExit):
        command.run(build_parser().parse_args(["bench-live", *flags.split()]))
    options = {name: passed[name] for name in tool.OPTION_FLAGS}
    assert options == {
        "scan_duty_cycle": 0.5,
        "frame_storage": "stacks",
        "line_search_frames": 512,
        "calibrate": "defocus",
        "defocus_sign": -1,
        "refine_seconds": 2.6,
    }
    assert option_flags(options) == flags


def test_command_runs_without_the_bluesky_stack(tmp_path):
    """The GPU host has event-model but no Bluesky, ophyd or Tiled: make them unimportable."""
    out = tmp_path / "live.json"
    code = (
        "import sys\n"
        f"for name in {ABSENT!r}:\n"
        "    sys.modules[name] = None  # any import of it raises ImportError\n"
        "from bluesky_ptycho import cli\n"
        "status = cli.main(['bench-live', '--frames', '40', '--frame-size', '32', "
        "'--rate-hz', '400', '--backend', 'numpy', '--refine-iterations', '3', "
        f"'--snapshot-interval', '0.05', '--json', {str(out)!r}])\n"
        "print('STATUS', status)\n"
        f"print('LOADED', sorted(n for n in {ABSENT!r} if sys.modules.get(n) is not None))\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "STATUS 0" in result.stdout and "LOADED []" in result.stdout, result.stdout
    assert "bench-live: 40 frames of 32x32" in result.stdout
    written = json.loads(out.read_text())
    assert written["frames_sent"] == written["frames_in_final"] == 40
    assert written["iterations_after_stop"] == 3
