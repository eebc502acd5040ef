"""Fault injection with a real RunEngine and the simulated beamline.

The scan completes as it would without the callback, the raw documents are
unchanged (deep copies taken as the RunEngine emitted them), and the derived
run ends with a truthful stop document.
"""

from __future__ import annotations

import copy

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from fault_support import assert_same
from ptycho_support import WAIT_S, Recorder, check_derived_run, stop_of

from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.sim.beamline import make_beamline

N = 30


@pytest.fixture
def beamline():
    return make_beamline(32, max_points=100, seed=4)


class RawCopies:
    """Keep each raw document and a deep copy taken when the RunEngine emitted it."""

    def __init__(self):
        self.docs: list[tuple[str, dict]] = []
        self.copies: list[tuple[str, dict]] = []

    def __call__(self, name, doc):
        self.docs.append((name, doc))
        self.copies.append((name, copy.deepcopy(doc)))


@pytest.fixture
def setup():
    made = []

    def make(**options):
        engine, raw, recorder = RunEngine({}), RawCopies(), Recorder()
        callback = PtychoCallback(
            recorder, backend="numpy", refine_iterations=3, scan_duty_cycle=1.0, **options
        )
        engine.subscribe(raw)
        engine.subscribe(callback)
        made.append(callback)
        return engine, raw, recorder, callback

    yield make
    for callback in made:
        assert callback.close(timeout=WAIT_S)


def scan(beamline, detector):
    x, y = beamline.positions_um(N)
    return bp.list_scan([detector], beamline.sx, list(x), beamline.sy, list(y))


def ended(callback, raw, recorder, raw_uid):
    assert callback.wait(timeout=WAIT_S)
    assert_same(raw.copies, raw.docs)
    result = callback.last_result
    assert result.raw_uid == raw_uid
    docs = recorder.of(raw_uid)
    check_derived_run(docs)
    assert (stop_of(docs)["exit_status"], stop_of(docs)["reason"]) == (
        result.exit_status,
        result.reason,
    )
    return result


def test_nan_inf_negative_and_hot_pixels(beamline, setup):
    engine, raw, recorder, callback = setup()
    detector = beamline.inline_detector()
    good = beamline.frame

    def bad_frame():
        image = good().astype(np.float64)
        image[1, 2], image[3, 4], image[5, 6], image[7, 7] = np.nan, np.inf, -3.0, 1e12
        return image

    detector.image.sim_set_func(bad_frame)
    md = beamline.metadata(detector.image.name, saturation_counts=1e9)
    (uid,) = engine(scan(beamline, detector), ptycho=md)
    result = ended(callback, raw, recorder, uid)
    assert result.exit_status == "success", result.reason
    assert result.frames_ingested == N
    assert np.isfinite(result.snapshot.object).all()


def test_files_outside_data_roots_with_a_real_run(beamline, setup, tmp_path):
    engine, raw, recorder, callback = setup(data_roots=[str(tmp_path / "allowed")])
    detector = beamline.file_detector(tmp_path / "elsewhere")
    (uid,) = engine(scan(beamline, detector), ptycho=beamline.metadata(detector.name))
    assert engine.state == "idle"
    result = ended(callback, raw, recorder, uid)
    assert result.exit_status == "fail"
    assert result.reason.startswith("refused: Resource") and "outside data_roots" in result.reason


def test_a_plan_that_fails_midway(beamline, setup):
    engine, raw, recorder, callback = setup()
    detector = beamline.inline_detector()

    def failing():
        x, y = beamline.positions_um(N)
        plan = bp.list_scan([detector], beamline.sx, list(x), beamline.sy, list(y))
        for count, message in enumerate(plan):
            if message.command == "trigger" and count > 200:
                raise RuntimeError("motor controller fault (injected)")
            yield message

    md = beamline.metadata(detector.image.name)
    with pytest.raises(RuntimeError, match="injected"):
        engine(failing(), ptycho=md)
    uid = raw.docs[0][1]["uid"]
    result = ended(callback, raw, recorder, uid)
    assert result.exit_status == "success", result.reason
    assert "raw run ended with exit_status 'fail'" in result.reason
    assert 0 < result.frames_ingested < N
