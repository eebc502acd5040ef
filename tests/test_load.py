"""Load: a long scan of small frames delivered back to back (tools/bench_load.py).

The full measurement (20,000 frames) is in docs/reliability.md; this smaller run
checks the same contract: every frame accounted for, none dropped, and the
callback's time per event on the calling thread well inside a 2 kHz detector's
0.5 ms budget.
"""

from __future__ import annotations

from bluesky_ptycho.tools.bench_load import DETECTOR_HZ, bench_load

FRAMES = 3000


def test_a_fast_long_scan_loses_no_frame():
    result = bench_load(FRAMES, frame_size=32, refine_iterations=2, timeout_s=300)
    assert result.exit_status == "success", result.reason
    assert result.frames_received == result.frames_ingested == FRAMES
    assert result.frames_failed == result.frames_unmatched == 0
    assert result.median_event_s < 1.0 / DETECTOR_HZ, result
    assert result.delivery_hz >= DETECTOR_HZ, result
