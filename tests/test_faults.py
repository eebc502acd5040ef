"""Fault injection: broken documents, bad data and failing files never harm a scan.

Each case feeds the real :class:`PtychoCallback` a raw run broken in one way
(documents composed with event-model, since a RunEngine would refuse to make
most of them) and checks the contract of docs/reliability.md: the callback
returns normally for every document, the raw documents are unchanged, the
derived run is schema-valid and ends with a stop document whose
``exit_status`` and reason tell the truth, and every announced frame is
counted as ingested, failed or unmatched (none lost silently).
"""

from __future__ import annotations

import re
import threading
import time

import h5py
import numpy as np
import pytest
from event_model import compose_run
from fault_support import IMAGE, assert_same, feed, step_run
from ptycho_support import WAIT_S, Recorder, check_derived_run, stop_of

from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.callback.memory import MemoryModel
from bluesky_ptycho.sim.beamline import make_beamline

N = 40
REFINE = 5


@pytest.fixture(scope="module")
def beamline():
    return make_beamline(32, max_points=200, seed=5)


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def make_callback(recorder):
    made: list[PtychoCallback] = []

    def make(**options) -> PtychoCallback:
        options.setdefault("backend", "numpy")
        options.setdefault("refine_iterations", REFINE)
        options.setdefault("snapshot_interval_s", 0.2)
        options.setdefault("scan_duty_cycle", 1.0)
        callback = PtychoCallback(recorder, **options)
        made.append(callback)
        return callback

    yield make
    for callback in made:
        assert callback.close(timeout=WAIT_S)


def outcome(callback, recorder, raw_uid):
    """Wait for the derived run of ``raw_uid``; check it and the frame accounting."""
    assert callback.wait(timeout=WAIT_S)
    last = callback.last_result  # the only one that keeps its snapshot
    if last is not None and last.raw_uid == raw_uid:
        result = last
    else:
        result = next(r for r in callback.results if r.raw_uid == raw_uid)
    docs = recorder.of(raw_uid)
    check_derived_run(docs)
    stop = stop_of(docs)
    assert stop["exit_status"] == result.exit_status
    assert stop.get("reason", "") == result.reason
    if result.reason.startswith("invalid settings"):  # failed before any frame was considered
        assert result.frames_ingested == result.frames_failed == result.frames_unmatched == 0
    elif result.frames_received:
        counted = result.frames_ingested + result.frames_failed + result.frames_unmatched
        assert counted == result.frames_received, result
    return result


def _nan_pixels(i, image):
    image = image.astype(np.float64)
    if i % 4 == 0:
        image[3, 4], image[5, 6], image[7, 8] = np.nan, np.inf, -5.0
    return image


def _hot_and_dead(i, image):
    image = image.copy()
    image[10, 10] = 2**32 - 1  # saturated / hot
    image[20:22, 0:3] = 0  # dead
    return image


def _zero_every_5th(i, image):
    return np.zeros_like(image) if i % 5 == 0 else image


def _shape_every_10th(i, image):
    return image[:16, :16] if i % 10 == 3 else image


def _complex_every_10th(i, image):
    return image.astype(np.complex64) if i % 10 == 3 else image


def _nan_position(i, x, y):
    return (float("nan"), y) if i % 10 == 7 else (x, y)


def _overshoot_3x(i, x, y):
    return (3 * x, 3 * y) if 20 <= i < 25 else (x, y)


def _no_position(i, x, y):
    return (None, y) if i % 8 == 2 else (x, y)


# (case, step_run keywords, callback options, exit_status, reason pattern, counts)
# counts: (ingested, failed, unmatched)
DATA_CASES = [
    ("clean", {}, {}, "success", r"^$", (N, 0, 0)),
    ("nan-inf-negative-counts", {"frame": _nan_pixels}, {}, "success", r"^$", (N, 0, 0)),
    (
        "saturated-and-dead-pixels",
        {"frame": _hot_and_dead},
        {"saturation_counts": 2**31},
        "success",
        r"^$",
        (N, 0, 0),
    ),
    ("all-zero-frames", {"frame": _zero_every_5th}, {}, "success", r"^$", (N, 0, 0)),
    (
        "wrong-frame-shape",
        {"frame": _shape_every_10th},
        {},
        "success",
        r"4 frame\(s\) not reconstructed.*frame shape \(16, 16\) differs from \(32, 32\)",
        (N - 4, 4, 0),
    ),
    (
        "wrong-frame-dtype",
        {"frame": _complex_every_10th},
        {},
        "success",
        r"4 frame\(s\) not reconstructed.*dtype complex64 is not counts",
        (N - 4, 4, 0),
    ),
    (
        "nan-positions",
        {"position": _nan_position},
        {},
        "success",
        r"4 frame\(s\) not reconstructed.*is not finite",
        (N - 4, 4, 0),
    ),
    ("positions-overshoot-3x", {"position": _overshoot_3x}, {}, "success", r"^$", (N, 0, 0)),
    (
        "frames-without-positions",
        {"position": _no_position},
        {},
        "success",
        r"0 frame\(s\) not reconstructed.*, 5 without positions.*images without positions",
        (N - 5, 0, 5),
    ),
    (
        "aborted-raw-run",
        {"exit_status": "abort"},
        {},
        "success",
        r"raw run ended with exit_status 'abort' after 40 frame",
        (N, 0, 0),
    ),
    (
        "failed-raw-run",
        {"exit_status": "fail"},
        {},
        "success",
        r"raw run ended with exit_status 'fail'",
        (N, 0, 0),
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "options", "status", "reason", "counts"),
    [case[1:] for case in DATA_CASES],
    ids=[case[0] for case in DATA_CASES],
)
def test_bad_data(beamline, make_callback, recorder, kwargs, options, status, reason, counts):
    callback = make_callback(**options)
    docs = step_run(beamline, N, **kwargs)
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    assert result.exit_status == status, result.reason
    assert re.search(reason, result.reason), result.reason
    got = (result.frames_ingested, result.frames_failed, result.frames_unmatched)
    assert got == counts, result
    assert result.frames_received == N
    if status == "success":
        assert np.isfinite(result.snapshot.object).all()
        assert result.iterations >= REFINE


# ----------------------------------------------------- malformed documents
def _without(mapping, key):
    return {k: v for k, v in mapping.items() if k != key}


def test_missing_metadata_key_fails_naming_it(beamline, make_callback, recorder):
    callback = make_callback()
    docs = step_run(beamline, N, metadata=_without(beamline.metadata(IMAGE), "distance_m"))
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    assert result.exit_status == "fail"
    assert "distance_m" in result.reason


def test_unknown_image_key_fails_naming_it(beamline, make_callback, recorder):
    callback = make_callback()
    docs = step_run(beamline, N, metadata=beamline.metadata("no_such_image"))
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    assert result.exit_status == "fail"
    assert "no data key 'no_such_image' arrived" in result.reason


def test_descriptor_without_the_position_keys(beamline, make_callback, recorder):
    callback = make_callback()
    keys = {IMAGE: {"source": "sim", "dtype": "array", "shape": [32, 32]}}
    docs = step_run(beamline, N, data_keys=keys)
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    assert result.exit_status == "fail"
    assert re.search(r"0 failed, 40 unmatched.*images without positions", result.reason)
    assert result.frames_unmatched == N


def test_events_before_their_descriptor_are_counted_not_lost(beamline, make_callback, recorder):
    callback = make_callback()
    docs = step_run(beamline, N)
    early = docs[2:5]  # three events moved before the descriptor
    docs = [docs[0], *early, docs[1], *docs[5:]]
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    assert result.exit_status == "success"
    assert (result.frames_received, result.frames_ingested, result.frames_failed) == (N, N - 3, 3)
    assert "arrived in events of descriptor" in result.reason
    assert "a descriptor must precede its events" in result.reason


def test_duplicate_and_out_of_order_seq_nums(beamline, make_callback, recorder):
    callback = make_callback()
    docs = step_run(beamline, N)
    events = docs[2:-1]
    events.reverse()  # out of order
    duplicate = ("event", {**events[5][1], "uid": "dup-event"})
    docs = [docs[0], docs[1], *events, duplicate, docs[-1]]
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    assert result.exit_status == "success"
    assert (result.frames_received, result.frames_ingested, result.frames_failed) == (
        N + 1,
        N,
        1,
    )
    assert re.search(r"seq_num \d+ of stream 'primary' repeated", result.reason)


def test_stop_without_events(beamline, make_callback, recorder):
    callback = make_callback()
    docs = step_run(beamline, N)
    docs = [docs[0], docs[1], docs[-1]]
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    assert result.exit_status == "fail"
    assert "no frames" in result.reason


def test_a_run_without_stop_is_ended_by_the_next_start(beamline, make_callback, recorder):
    callback = make_callback()
    first = step_run(beamline, N)[:-1]
    second = step_run(beamline, N)
    feed(callback, first + second)
    assert callback.wait(timeout=WAIT_S)
    lost = outcome(callback, recorder, first[0][1]["uid"])
    assert lost.exit_status == "fail"
    assert "no stop document before the next run started" in lost.reason
    assert outcome(callback, recorder, second[0][1]["uid"]).exit_status == "success"


# ------------------------------------------------------------------ files
def _stream_run(beamline, path, n, **start):
    """Step scan whose images are a StreamResource (HDF5 at ``path``), positions inline."""
    run = compose_run(metadata={"ptycho": beamline.metadata(IMAGE), "num_points": n, **start})
    keys = {
        IMAGE: {"source": "sim", "dtype": "array", "shape": [1, 32, 32], "external": "STREAM:"},
        "sx": {"source": "sim", "dtype": "number", "shape": []},
        "sy": {"source": "sim", "dtype": "number", "shape": []},
    }
    descriptor = run.compose_descriptor(data_keys=keys, name="primary")
    resource = run.compose_stream_resource(
        mimetype="application/x-hdf5",
        uri=f"file://localhost{path}",
        data_key=IMAGE,
        parameters={"dataset": "/entry/data/data"},
    )
    docs = [
        ("start", run.start_doc),
        ("descriptor", descriptor.descriptor_doc),
        ("stream_resource", resource.stream_resource_doc),
    ]
    xs, ys = beamline.positions_um(n)
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        data = {"sx": float(x), "sy": float(y)}
        docs.append(
            (
                "event",
                descriptor.compose_event(data=data, timestamps={"sx": 0, "sy": 0}, seq_num=i + 1),
            )
        )
    datum = resource.compose_stream_datum(
        indices={"start": 0, "stop": n}, seq_nums={"start": 1, "stop": n + 1}
    )
    datum["descriptor"] = descriptor.descriptor_doc["uid"]
    docs.append(("stream_datum", datum))
    docs.append(("stop", run.compose_stop()))
    frames = np.stack([beamline.frame_at(float(x), float(y)) for x, y in zip(xs, ys, strict=True)])
    return docs, frames


def _write_hdf5(path, frames):
    with h5py.File(path, "w") as handle:
        handle.create_dataset("/entry/data/data", data=frames)


def test_hdf5_file_written_late_is_waited_for(beamline, make_callback, recorder, tmp_path):
    path = tmp_path / "late.h5"
    docs, frames = _stream_run(beamline, str(path), N)
    callback = make_callback(file_timeout_s=20.0, data_roots=[str(tmp_path)])
    writer = threading.Timer(1.0, _write_hdf5, (path, frames))
    writer.start()
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    writer.join()
    assert result.exit_status == "success", result.reason
    assert result.frames_ingested == N


def test_hdf5_file_that_never_appears(beamline, make_callback, recorder, tmp_path):
    docs, _ = _stream_run(beamline, str(tmp_path / "never.h5"), N)
    callback = make_callback(file_timeout_s=0.5, data_roots=[str(tmp_path)])
    started = time.monotonic()
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    assert time.monotonic() - started >= 0.5
    assert result.exit_status == "fail"
    assert "still unreadable after the stop document and file_timeout_s" in result.reason
    assert "file does not exist" in result.reason
    assert result.frames_failed == N


def test_a_file_that_is_not_hdf5_fails_at_once(beamline, make_callback, recorder, tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("this is not an HDF5 file\n" * 10)
    docs, _ = _stream_run(beamline, str(path), N)
    callback = make_callback(file_timeout_s=60.0, data_roots=[str(tmp_path)])
    started = time.monotonic()
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    assert time.monotonic() - started < 30.0  # did not wait for file_timeout_s
    assert result.exit_status == "fail"
    assert "not an HDF5 file" in result.reason


# ------------------------------------------------------------------ memory
def test_a_huge_declared_frame_is_refused_before_allocation(beamline, make_callback, recorder):
    callback = make_callback()
    shape = [10**6, 10**6]
    keys = {
        IMAGE: {"source": "sim", "dtype": "array", "shape": shape},
        "sx": {"source": "sim", "dtype": "number", "shape": []},
        "sy": {"source": "sim", "dtype": "number", "shape": []},
    }
    docs = step_run(beamline, 3, data_keys=keys)
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    assert result.exit_status == "fail"
    assert re.search(
        r"1000000 x 1000000 pixels need about .* GiB, over memory_budget", result.reason
    )
    assert "raise PtychoCallback(memory_budget_bytes=...)" in result.reason


def test_a_declared_scan_over_the_budget_is_refused(beamline, make_callback, recorder):
    callback = make_callback(memory_budget_bytes=10 * 2**20)
    docs = step_run(beamline, 3)
    docs[0] = ("start", {**docs[0][1], "num_points": 10**6})
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    assert result.exit_status == "fail"
    assert "1000000 frame(s) of 32 x 32" in result.reason


def test_frames_over_the_budget_are_skipped_and_reported(beamline, make_callback, recorder):
    budget = MemoryModel().estimate_bytes(20, (32, 32))  # room for 20 frames
    callback = make_callback(memory_budget_bytes=budget)
    docs = step_run(beamline, N)
    docs[0] = ("start", _without(docs[0][1], "num_points"))
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    assert result.exit_status == "success"
    assert (result.frames_ingested, result.frames_failed) == (20, 20)
    assert "skipped: the run reached memory_budget_bytes" in result.reason


def test_raw_documents_compare_equal_after_a_copy():
    """The deep compare used by :func:`feed` can fail (it is not vacuous)."""
    a = [("event", {"data": {"x": np.zeros(3)}})]
    b = [("event", {"data": {"x": np.ones(3)}})]
    with pytest.raises(AssertionError):
        assert_same(a, b)


# --------------------------------------------------------------- divergence
@pytest.fixture
def diverging(monkeypatch):
    """Make chosen engine iterations (1-based, or all) leave a non-finite object."""
    from bluesky_ptycho.engine.reconstructor import Reconstructor

    real_step = Reconstructor._step
    bad: set[int] = set()
    everything = []

    def step(self):
        real_step(self)
        if everything or self.iteration in bad:
            self.object[0, 0] = np.nan

    monkeypatch.setattr(Reconstructor, "_step", step)

    def choose(iterations=None):
        if iterations is None:
            everything.append(True)
        else:
            bad.update(iterations)

    return choose


def test_a_diverging_iteration_is_rolled_back(beamline, make_callback, recorder, diverging):
    diverging({3})
    callback = make_callback(min_frames=N)
    docs = step_run(beamline, N)
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    assert result.exit_status == "success", result.reason
    assert "1 diverging iteration(s) rolled back (step damped x0.1 each)" in result.reason
    assert np.isfinite(result.snapshot.object).all()
    assert result.snapshot.metrics["rollbacks"] == 1


def test_a_reconstruction_that_keeps_diverging_fails(beamline, make_callback, recorder, diverging):
    diverging()
    callback = make_callback()
    docs = step_run(beamline, N)
    feed(callback, docs)
    result = outcome(callback, recorder, docs[0][1]["uid"])
    assert result.exit_status == "fail"
    assert "the reconstruction diverged: 3 iterations in a row" in result.reason


def test_the_memory_estimate_covers_the_engine(beamline):
    """Peak traced memory of add_frames + 3 iterations stays under the estimate."""
    import tracemalloc

    from bluesky_ptycho.engine.reconstructor import Reconstructor

    n = 300
    xs, ys = beamline.positions_um(n)
    frames = np.stack([beamline.frame_at(float(x), float(y)) for x, y in zip(xs, ys, strict=True)])
    tracemalloc.start()
    try:
        engine = Reconstructor(beamline.config, backend="numpy")
        engine.add_frames(frames, xs, ys)
        engine.iterate(3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = MemoryModel().estimate_bytes(n, (32, 32))
    assert 0.5 * estimate < peak <= estimate, (peak, estimate)
    assert MemoryModel().frames_within(estimate, (32, 32)) == n
