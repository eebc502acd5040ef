"""Closed configuration: strings, booleans and out-of-range values in the start document
and in constructor keywords (a RunEngine scan, the simulated beamline, a fake-free worker)."""

from __future__ import annotations

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from ptycho_support import WAIT_S, Recorder, check_derived_run, stop_of

from bluesky_ptycho.callback import CallbackOptions, PtychoCallback
from bluesky_ptycho.callback.settings import RUN_DEFAULTS, RunKeys, merge
from bluesky_ptycho.config import FIELD_CHECKS, ReconConfig
from bluesky_ptycho.sim.beamline import make_beamline

GEOMETRY = {"energy_kev": 9.0, "distance_m": 0.5, "detector_pixel_m": 75e-6}
KEYS = {"image_key": "det_image", "x_key": "sx", "y_key": "sy"}

#: (key, bad value, words the reason must contain: the key, what is expected, what was given)
BAD_VALUES = [
    ("alpha_relative", "1e-3", ["alpha_relative", "a number in (0, 1)", "'1e-3'", "a string"]),
    ("energy_kev", True, ["energy_kev", "a finite number > 0", "True", "boolean"]),
    ("x_direction", True, ["x_direction", "1, -1", "True"]),
    ("probe_hold_iterations", True, ["probe_hold_iterations", "an integer >= 0", "True"]),
    ("min_frames", 0, ["min_frames", "an integer >= 1", "got 0"]),
    ("calibrate_frames", 4, ["calibrate_frames", "an integer >= 8", "got 4"]),
    ("object_margin_px", 2.0, ["object_margin_px", "an integer >= 0", "got 2.0"]),
    ("refine_iterations", "10", ["refine_iterations", "an integer >= 0", "'10'"]),
]


@pytest.fixture(scope="module")
def beamline():
    return make_beamline(32, max_points=50, seed=1)


def test_bad_values_in_the_start_document_fail_only_their_derived_run(beamline):
    recorder = Recorder()
    callback = PtychoCallback(recorder, backend="numpy", snapshot_interval_s=10.0, **GEOMETRY)
    RE = RunEngine({})
    RE.subscribe(callback)
    x, y = beamline.positions_um(12)

    def scan(**ptycho):
        detector = beamline.inline_detector()
        plan = bp.list_scan([detector], beamline.sx, list(x), beamline.sy, list(y))
        (uid,) = RE(plan, ptycho={**KEYS, "refine_iterations": 2, **ptycho})
        return uid

    try:
        for key, value, words in BAD_VALUES:
            uid = scan(**{key: value})  # the scan completes
            assert callback.wait(timeout=WAIT_S), key  # and wait() tells the truth
            docs = recorder.of(uid)
            check_derived_run(docs)
            stop = stop_of(docs)
            assert stop["exit_status"] == "fail", key
            assert "start document 'ptycho' metadata" in stop["reason"]
            for word in words:
                assert word in stop["reason"], (word, stop["reason"])
        good = scan()
        assert callback.wait(timeout=WAIT_S)
        assert stop_of(recorder.of(good))["exit_status"] == "success"
        assert callback.last_result.frames_ingested == 12
    finally:
        assert callback.close(timeout=WAIT_S)


@pytest.mark.parametrize(("key", "value", "words"), BAD_VALUES)
def test_bad_constructor_keywords_are_refused_at_once(key, value, words):
    with pytest.raises(ValueError, match=r"PtychoCallback\(") as error:
        PtychoCallback(None, **{**GEOMETRY, key: value})
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("snapshot_interval_s", "1.0", "seconds >= 0"),
        ("max_queued_frames", True, "an integer >= 1"),
        ("max_queued_frames", 0, "an integer >= 1"),
        ("scan_duty_cycle", 0.0, "'auto' or a number in (0, 1]"),
        ("scan_duty_cycle", True, "'auto' or a number in (0, 1]"),
        ("backend", "gpu", "'auto', 'numpy', 'cupy'"),
        ("new_run_policy", "later", "'finish', 'preempt'"),
        ("require_metadata", 1, "True or False"),
        ("worker_nice", 40, "an integer in 0..19"),
        ("gpus", "0,1", "a non-empty list of CUDA device numbers"),
        ("gpus", [0, True], "a non-empty list of CUDA device numbers"),
        ("gpus", [], "a non-empty list of CUDA device numbers"),
    ],
)
def test_bad_callback_options_name_the_option(option, value, expected):
    with pytest.raises(ValueError) as error:
        PtychoCallback(None, **{option: value})
    assert option in str(error.value) and expected in str(error.value)
    with pytest.raises(ValueError, match=option):
        CallbackOptions(**{option: value})


def test_a_combination_known_only_at_run_time_fails_that_run(beamline, tmp_path):
    """Both probe and probe_path: each valid alone (constructor), refused together (run)."""
    import numpy as np

    path = tmp_path / "probe.npy"
    np.save(path, np.ones((32, 32), np.complex64))
    recorder = Recorder()
    callback = PtychoCallback(recorder, backend="numpy", probe_path=str(path), **GEOMETRY)
    RE = RunEngine({})
    RE.subscribe(callback)
    x, y = beamline.positions_um(6)
    plan = bp.list_scan([beamline.inline_detector()], beamline.sx, list(x), beamline.sy, list(y))
    try:
        (uid,) = RE(plan, ptycho={**KEYS, "probe": [[1.0]]})
        assert callback.wait(timeout=WAIT_S)
        stop = stop_of(recorder.of(uid))
        assert stop["exit_status"] == "fail" and "probe_path" in stop["reason"]
    finally:
        assert callback.close(timeout=WAIT_S)


def test_options_object_is_the_default_and_keywords_win():
    options = CallbackOptions(backend="numpy", snapshot_interval_s=5.0)
    callback = PtychoCallback(None, options=options, snapshot_interval_s=2.0)
    assert callback.options.backend == "numpy" and callback.options.snapshot_interval_s == 2.0
    assert callback.close()


def test_each_default_is_defined_once():
    assert RUN_DEFAULTS == {f: getattr(RunKeys(), f) for f in RUN_DEFAULTS}
    assert merge({**GEOMETRY, **KEYS}, {}).min_frames == RunKeys.min_frames


def test_every_reconconfig_field_has_a_check():
    assert set(FIELD_CHECKS) == set(ReconConfig.field_names())


def test_no_silent_adjustment_and_numbers_stay_numbers():
    config = ReconConfig(**GEOMETRY, frame_shape=[16, 16], object_margin_px=3)
    assert config.frame_shape == (16, 16) and config.object_margin_px == 3
    for bad in ({"frame_shape": (16.0, 16)}, {"saturation_counts": "6e4"}, {"dtype": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ReconConfig(**{**GEOMETRY, "frame_shape": (16, 16), **bad})


def test_auto_throttle_only_for_numpy_on_few_cores(monkeypatch):
    from bluesky_ptycho.callback import options as options_module

    auto = CallbackOptions()
    assert auto.scan_duty_cycle == "auto"
    monkeypatch.setattr(options_module, "usable_cores", lambda: 2)
    assert auto.duty_cycle("numpy") == options_module.AUTO_DUTY_CYCLE < 1
    assert auto.duty_cycle("cupy") == 1.0
    assert CallbackOptions(scan_duty_cycle=0.5).duty_cycle("numpy") == 0.5
    monkeypatch.setattr(options_module, "usable_cores", lambda: 16)
    assert auto.duty_cycle("numpy") == 1.0
