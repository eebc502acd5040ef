"""Replay of a stored raw run (from Tiled, and from a document list) gives the live image."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky.callbacks.buffer import BufferingWrapper
from bluesky_tiled_plugins import TiledWriter
from ptycho_support import WAIT_S, Recorder
from tiled_support import simulated_scan

from bluesky_ptycho import cli
from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.metrics import COVERED_RELATIVE, crop_truth, object_nrmse, snapshot_nrmse
from bluesky_ptycho.replay import replay

POINTS = 80
REFINE = 40
#: the issue's bound on the difference between a replay and the live result
MAX_LIVE_REPLAY_NRMSE = 0.05


def pair_nrmse(a, b) -> float:
    """NRMSE of snapshot ``a`` against snapshot ``b`` over both covered regions."""
    other = crop_truth(b.object, b.origin_m, a.object.shape, a.origin_m, a.pixel_m)
    other_cov = crop_truth(b.coverage, b.origin_m, a.object.shape, a.origin_m, a.pixel_m)
    region = (a.coverage >= COVERED_RELATIVE) & (np.nan_to_num(other_cov.real) >= COVERED_RELATIVE)
    return object_nrmse(a.object, np.nan_to_num(other), region)


def test_replay_of_a_stored_run_matches_the_live_result(tiled_server, capsys):
    server = tiled_server
    client = server.client()
    beamline, RE, plan, md = simulated_scan(POINTS)
    raw_writer = BufferingWrapper(TiledWriter(client, batch_size=20))
    raw_documents = Recorder()
    live = PtychoCallback(
        TiledWriter(client, batch_size=50), backend="numpy", refine_iterations=REFINE
    )
    for subscriber in (raw_writer, raw_documents, live):
        RE.subscribe(subscriber)
    (raw_uid,) = RE(plan, ptycho=md)
    raw_writer.shutdown(wait=True)
    try:
        assert live.wait(timeout=WAIT_S)
    finally:
        assert live.close(timeout=WAIT_S)
    live_result = live.last_result
    truth = beamline.sample.object, beamline.sample.origin_m
    assert snapshot_nrmse(live_result.snapshot, *truth) <= 0.10

    # from Tiled, in chunks with prefetch; the derived run goes next to the raw one
    again = PtychoCallback(
        TiledWriter(client, batch_size=50), backend="numpy", refine_iterations=REFINE
    )
    try:
        outcome = replay(client[raw_uid], again, chunk_frames=32, timeout_s=WAIT_S)
    finally:
        assert again.close(timeout=WAIT_S)
    result = outcome.result
    assert outcome.frames == POINTS and result.frames_ingested == POINTS
    assert result.exit_status == "success" and outcome.frames_per_s > 0
    assert pair_nrmse(result.snapshot, live_result.snapshot) <= MAX_LIVE_REPLAY_NRMSE
    derived = client[result.derived_uid]
    assert derived.metadata["start"]["derived_from"] == raw_uid
    assert derived["primary"]["object_amplitude"].shape[1:] == result.snapshot.object.shape
    assert client[raw_uid].metadata["stop"]["exit_status"] == "success"  # raw run untouched

    # from a plain document list, with a setting overridden
    recorded = [(n, d) for n, d in raw_documents.docs]
    third = PtychoCallback(backend="numpy", refine_iterations=0)
    try:
        outcome = replay(recorded, third, settings={"refine_iterations": REFINE})
    finally:
        assert third.close(timeout=WAIT_S)
    assert outcome.result.refine_iterations_done == REFINE
    assert pair_nrmse(outcome.result.snapshot, live_result.snapshot) <= MAX_LIVE_REPLAY_NRMSE
    assert recorded[0][1].get("ptycho", {}).get("refine_iterations") is None  # not modified

    # the command line: a replay of the first frames, with the frames/s it reached
    status = cli.main(
        [
            "replay",
            "--tiled",
            server.uri,
            "--uid",
            raw_uid,
            "--max-frames",
            "40",
            "--refine-iterations",
            "5",
            "--backend",
            "numpy",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "replayed 40 frames" in out and "frames/s" in out


def test_replay_settings_are_checked():
    with pytest.raises(ValueError, match="unknown setting"):
        replay([("start", {"uid": "x"})], PtychoCallback(), settings={"refine_iteration": 3})
