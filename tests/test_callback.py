"""PtychoCallback with a real RunEngine and the simulated beamline: every input path,
settings from the start document, ignored runs, consecutive runs, failures."""

from __future__ import annotations

import time

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from event_model import RunRouter
from ophyd.sim import SynGauss
from ptycho_support import WAIT_S, EventPager, Recorder, check_derived_run, events_of, stop_of

from bluesky_ptycho.callback import PtychoCallback, ptycho_factory
from bluesky_ptycho.metrics import snapshot_nrmse
from bluesky_ptycho.sim.beamline import make_beamline
from bluesky_ptycho.sim.hdf5_detector import fly_scan

#: 32x32 frames keep these tests fast; a wrong frame/position pairing gives NRMSE ~0.5
FRAME_SIZE = 32
POINTS = 100
REFINE = 25
PAIRING_NRMSE = 0.15


@pytest.fixture(scope="module")
def beamline():
    return make_beamline(FRAME_SIZE, max_points=400, seed=3)


@pytest.fixture
def RE():
    return RunEngine({})


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def callbacks():
    made: list[PtychoCallback] = []
    yield made
    for callback in made:
        assert callback.close(timeout=WAIT_S)


@pytest.fixture
def make_callback(recorder, callbacks):
    def make(**options) -> PtychoCallback:
        options.setdefault("backend", "numpy")
        options.setdefault("refine_iterations", REFINE)
        options.setdefault("snapshot_interval_s", 0.2)
        callback = PtychoCallback(recorder, **options)
        callbacks.append(callback)
        return callback

    return make


def step_scan(beamline, detector, n=POINTS):
    x, y = beamline.positions_um(n)
    return bp.list_scan([detector], beamline.sx, list(x), beamline.sy, list(y))


def finished(callback, recorder, raw_uid, n=POINTS):
    """Wait for the run, check its accounting and derived documents; returns the result."""
    assert callback.wait(timeout=WAIT_S)
    result = callback.last_result
    assert result.raw_uid == raw_uid
    assert result.exit_status == "success", result.reason
    assert result.frames_received == result.frames_ingested == n
    assert result.frames_failed == result.frames_unmatched == 0
    docs = recorder.of(raw_uid)
    check_derived_run(docs)
    assert docs[0][1]["uid"] == result.derived_uid
    assert stop_of(docs)["exit_status"] == "success"
    (primary,) = events_of(docs, "primary")
    assert primary["data"]["frames_ingested"] == n
    return result


def nrmse(result, beamline):
    return snapshot_nrmse(result.snapshot, beamline.sample.object, beamline.sample.origin_m)


# --------------------------------------------------------------- input paths
def test_inline_events(RE, beamline, make_callback, recorder):
    callback = make_callback()
    RE.subscribe(callback)
    (uid,) = RE(
        step_scan(beamline, beamline.inline_detector()), ptycho=beamline.metadata("det_image")
    )
    result = finished(callback, recorder, uid)
    assert nrmse(result, beamline) <= PAIRING_NRMSE
    assert callback.errors == 0


def test_event_pages(RE, beamline, make_callback, recorder):
    callback = make_callback()
    pager = EventPager(callback, size=7)
    RE.subscribe(pager)
    (uid,) = RE(
        step_scan(beamline, beamline.inline_detector()), ptycho=beamline.metadata("det_image")
    )
    result = finished(callback, recorder, uid)
    assert callback.timings.count.get("event_page", 0) == -(-POINTS // 7)
    assert "event" not in callback.timings.count
    assert nrmse(result, beamline) <= PAIRING_NRMSE


def test_resource_datum_npy_seq(RE, beamline, make_callback, recorder, tmp_path):
    callback = make_callback()
    RE.subscribe(callback)
    detector = beamline.file_detector(tmp_path / "npy")
    (uid,) = RE(step_scan(beamline, detector), ptycho=beamline.metadata("fdet_image"))
    result = finished(callback, recorder, uid)
    assert callback.timings.count["datum"] == POINTS
    assert nrmse(result, beamline) <= PAIRING_NRMSE


def test_run_router_factory_with_event_and_datum_pages(RE, beamline, recorder, callbacks, tmp_path):
    factory = ptycho_factory(recorder, backend="numpy", refine_iterations=REFINE)
    callback = factory.callback
    callbacks.append(callback)
    RE.subscribe(RunRouter([factory]))
    detector = beamline.file_detector(tmp_path / "npy")
    (uid,) = RE(step_scan(beamline, detector), ptycho=beamline.metadata("fdet_image"))
    result = finished(callback, recorder, uid)
    assert callback.timings.count["event_page"] == POINTS
    assert callback.timings.count["datum_page"] == POINTS
    assert nrmse(result, beamline) <= PAIRING_NRMSE


def test_stream_resource_step_scan(RE, beamline, make_callback, recorder, tmp_path):
    callback = make_callback()
    RE.subscribe(callback)
    detector = beamline.hdf5_detector(tmp_path / "h5")
    (uid,) = RE(step_scan(beamline, detector), ptycho=beamline.metadata("xdet"))
    result = finished(callback, recorder, uid)
    assert callback.timings.count["stream_datum"] == 3 * POINTS
    assert nrmse(result, beamline) <= PAIRING_NRMSE


def test_stream_resource_fly_scan_with_positions_as_streams(
    RE, beamline, make_callback, recorder, tmp_path
):
    callback = make_callback()
    raw: list[str] = []
    RE.subscribe(lambda name, doc: raw.append(name))
    RE.subscribe(callback)
    detector = beamline.hdf5_detector(tmp_path / "h5")
    x, y = beamline.positions_um(POINTS)
    md = beamline.metadata("xdet", x_key="xdet-x", y_key="xdet-y")
    (uid,) = RE(fly_scan(detector, x, y, exposure_s=0.001), ptycho=md)
    assert "event" not in raw and "stream_datum" in raw  # a real fly scan: no events at all
    result = finished(callback, recorder, uid)
    assert nrmse(result, beamline) <= PAIRING_NRMSE


# ------------------------------------------------------------ configuration
def test_start_metadata_overrides_constructor_keywords(RE, beamline, make_callback, recorder):
    callback = make_callback(
        energy_kev=5.0,
        distance_m=2.0,
        detector_pixel_m=1e-4,
        image_key="nothing",
        x_key="a",
        y_key="b",
    )
    RE.subscribe(callback)
    md = beamline.metadata("det_image", refine_iterations=4)
    (uid,) = RE(step_scan(beamline, beamline.inline_detector(), n=40), ptycho=md)
    result = finished(callback, recorder, uid, n=40)
    assert result.refine_iterations_done == 4
    settings = recorder.of(uid)[0][1]["ptycho_reconstruction"]
    assert settings["energy_kev"] == beamline.config.energy_kev
    assert settings["image_key"] == "det_image" and settings["refine_iterations"] == 4


def test_constructor_keywords_alone_reconstruct_runs_with_the_data_keys(
    RE, beamline, make_callback, recorder
):
    md = beamline.metadata("det_image", refine_iterations=3)
    callback = make_callback(**md)
    RE.subscribe(callback)
    (uid,) = RE(step_scan(beamline, beamline.inline_detector(), n=30))  # no ptycho metadata
    finished(callback, recorder, uid, n=30)


def test_non_ptychography_runs_are_ignored_quietly(RE, beamline, make_callback, recorder, caplog):
    configured = make_callback(**beamline.metadata("det_image"))
    unconfigured = make_callback()
    RE.subscribe(configured)
    RE.subscribe(unconfigured)
    gauss = SynGauss("gauss", beamline.sx, "sx", center=0, Imax=1, sigma=1)
    RE(bp.count([gauss], num=5))
    RE(bp.scan([gauss], beamline.sx, -1, 1, 5))
    RE(step_scan(beamline, beamline.inline_detector(), n=5), ptycho=False)  # explicit opt-out
    for callback in (configured, unconfigured):
        assert callback.wait(timeout=WAIT_S)
        assert callback.queue_stats().items_in == 0
        assert callback.last_result is None and callback.errors == 0
    assert recorder.docs == []
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


def test_two_consecutive_runs_get_fresh_reconstructions(RE, beamline, make_callback, recorder):
    callback = make_callback(refine_iterations=6)
    RE.subscribe(callback)
    detector = beamline.inline_detector()
    (first,) = RE(step_scan(beamline, detector, n=60), ptycho=beamline.metadata("det_image"))
    (second,) = RE(step_scan(beamline, detector, n=35), ptycho=beamline.metadata("det_image"))
    assert callback.wait(timeout=WAIT_S)
    one, two = callback.results
    assert (one.raw_uid, two.raw_uid) == (first, second)
    assert (one.frames_ingested, two.frames_ingested) == (60, 35)
    assert one.refine_iterations_done == two.refine_iterations_done == 6  # "finish" policy
    assert callback.last_result.snapshot.n_frames == 35  # nothing carried over
    assert one.derived_uid != two.derived_uid
    for uid in (first, second):
        check_derived_run(recorder.of(uid))


def test_refine_seconds_bound_the_refinement_after_the_stop(
    RE, beamline, make_callback, recorder
):
    budget_s = 0.5
    callback = make_callback(refine_iterations=100_000, refine_seconds=budget_s)
    RE.subscribe(callback)
    (uid,) = RE(step_scan(beamline, beamline.inline_detector(), n=40),
                ptycho=beamline.metadata("det_image"))  # fmt: skip
    stopped = time.monotonic()
    result = finished(callback, recorder, uid, n=40)
    waited_s = time.monotonic() - stopped
    assert 1 <= result.refine_iterations_done < 100_000
    assert waited_s < budget_s + 5.0  # the final snapshot and the derived run's end
    md = beamline.metadata("det_image", refine_iterations=3, refine_seconds=1000.0)
    (uid,) = RE(step_scan(beamline, beamline.inline_detector(), n=40), ptycho=md)
    assert finished(callback, recorder, uid, n=40).refine_iterations_done == 3


def test_preempt_policy_cuts_refinement_when_the_next_run_starts(
    RE, beamline, make_callback, recorder
):
    callback = make_callback(new_run_policy="preempt", refine_iterations=100_000)
    RE.subscribe(callback)
    detector = beamline.inline_detector()
    (first,) = RE(step_scan(beamline, detector, n=40), ptycho=beamline.metadata("det_image"))
    md = beamline.metadata("det_image", refine_iterations=2)
    (second,) = RE(step_scan(beamline, detector, n=30), ptycho=md)
    assert callback.wait(timeout=WAIT_S)
    one, two = callback.results
    assert one.exit_status == "success" and "new run started" in one.reason
    assert one.refine_iterations_done < 100_000
    assert two.exit_status == "success" and two.refine_iterations_done == 2
    assert stop_of(recorder.of(first))["reason"] == one.reason


# ----------------------------------------------------------------- failures
def test_invalid_metadata_fails_the_derived_run_not_the_scan(RE, beamline, make_callback, recorder):
    callback = make_callback()
    RE.subscribe(callback)
    md = beamline.metadata("det_image", energy_kev=-1.0)
    (uid,) = RE(step_scan(beamline, beamline.inline_detector(), n=10), ptycho=md)
    assert callback.wait(timeout=WAIT_S)
    stop = stop_of(recorder.of(uid))
    assert stop["exit_status"] == "fail" and "energy_kev" in stop["reason"]
    check_derived_run(recorder.of(uid))


def test_missing_image_key_fails_with_a_reason(RE, beamline, make_callback, recorder):
    callback = make_callback()
    RE.subscribe(callback)
    (uid,) = RE(
        step_scan(beamline, beamline.inline_detector(), n=5), ptycho=beamline.metadata("cam")
    )
    assert callback.wait(timeout=WAIT_S)
    stop = stop_of(recorder.of(uid))
    assert stop["exit_status"] == "fail" and "'cam'" in stop["reason"]


class _BrokenCallback(PtychoCallback):
    def event(self, doc):
        raise RuntimeError("parser bug")


def test_an_exception_in_the_callback_never_reaches_the_run_engine(
    RE, beamline, recorder, callbacks
):
    callback = _BrokenCallback(recorder, backend="numpy", refine_iterations=2)
    callbacks.append(callback)
    RE.subscribe(callback)
    (uid,) = RE(
        step_scan(beamline, beamline.inline_detector(), n=5), ptycho=beamline.metadata("det_image")
    )
    assert callback.wait(timeout=WAIT_S)
    assert callback.errors == 5
    stop = stop_of(recorder.of(uid))
    assert stop["exit_status"] == "fail" and "parser bug" in stop["reason"]
