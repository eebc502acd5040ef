"""Calibration on the first frames of a live scan (issue 4's callback option)."""

from __future__ import annotations

import json

import bluesky.plans as bp
from bluesky import RunEngine
from ptycho_support import WAIT_S, Recorder, check_derived_run, events_of

from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.metrics import snapshot_nrmse
from bluesky_ptycho.sim.beamline import make_beamline
from bluesky_ptycho.sim.sample import default_config

POINTS = 120


def run_scan(beamline, **settings):
    recorder = Recorder()
    callback = PtychoCallback(
        recorder, backend="numpy", refine_iterations=40, snapshot_interval_s=1.0
    )
    RE = RunEngine({})
    RE.subscribe(callback)
    x, y = beamline.positions_um(POINTS)
    detector = beamline.inline_detector()
    plan = bp.list_scan([detector], beamline.sx, list(x), beamline.sy, list(y))
    (uid,) = RE(plan, ptycho=beamline.metadata("det_image", **settings))
    assert callback.wait(timeout=WAIT_S)
    assert callback.close(timeout=WAIT_S)
    result = callback.last_result
    assert result.exit_status == "success", result.reason
    assert result.frames_ingested == POINTS
    docs = recorder.of(uid)
    check_derived_run(docs)
    (primary,) = events_of(docs, "primary")
    return result, primary["data"]


def test_orientation_and_defocus_found_on_the_first_frames():
    # Frames recorded rotated (rot90_cw) with a probe 60 um downstream of focus;
    # the scan's metadata claims identity and no defocus.
    beamline = make_beamline(
        32, max_points=400, seed=5, config=default_config(32, dp_orient="rot90_cw")
    )
    result, primary = run_scan(
        beamline, dp_orient="identity", calibrate="both", calibrate_frames=48, defocus_sign=1
    )
    calibration = json.loads(primary["calibration"])
    assert calibration["applied"], calibration
    assert "--" not in calibration["note"]  # advice in setting names, never CLI flags
    for advice in calibration["advice"]:
        assert {o for r in advice["remedies"] for o in r["options"]}, advice
    assert 30e-6 < primary["probe_propagation_m"] < 90e-6  # planted: 60 um
    assert result.snapshot.metrics["calibration"] == calibration
    truth = beamline.sample
    assert snapshot_nrmse(result.snapshot, truth.object, truth.origin_m) <= 0.10
    # the same scan reconstructed as its metadata claims fails
    plain, _ = run_scan(beamline, dp_orient="identity")
    assert snapshot_nrmse(plain.snapshot, truth.object, truth.origin_m) > 0.3


def test_calibration_off_reports_nothing():
    beamline = make_beamline(32, max_points=400, seed=5)
    result, primary = run_scan(beamline, refine_iterations=5)
    assert json.loads(primary["calibration"]) == {}
    assert primary["probe_propagation_m"] == 0.0
