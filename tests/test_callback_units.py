"""Callback building blocks without a RunEngine: settings, ingest queue, frame joining,
publisher."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from bluesky_ptycho.callback.handlers import NumpySeqHandler, handler_registry
from bluesky_ptycho.callback.ingest import IngestQueue, Item, Start, Values
from bluesky_ptycho.callback.settings import RUN_DEFAULTS, allowed_keys, merge
from bluesky_ptycho.callback.sources import FrameAssembler
from bluesky_ptycho.config import ReconConfig
from bluesky_ptycho.engine.reconstructor import Snapshot
from bluesky_ptycho.outputs import Progress, SnapshotPublisher

BASE = {
    "energy_kev": 9.0,
    "distance_m": 0.5,
    "detector_pixel_m": 75e-6,
    "image_key": "det_image",
    "x_key": "sx",
    "y_key": "sy",
}


# ------------------------------------------------------------------ settings
def test_metadata_wins_over_constructor_keywords():
    settings = merge(BASE, {"energy_kev": 12.0, "image_key": "other", "refine_iterations": 3})
    assert settings.recon["energy_kev"] == 12.0
    assert settings.recon["distance_m"] == 0.5
    assert settings.image_key == "other"
    assert settings.refine_iterations == 3
    assert settings.min_frames == RUN_DEFAULTS["min_frames"]
    config = settings.config((32, 32))
    assert isinstance(config, ReconConfig) and config.frame_shape == (32, 32)
    assert settings.describe()["energy_kev"] == 12.0


def test_every_reconconfig_field_is_a_setting():
    assert set(ReconConfig.field_names()) <= set(allowed_keys())


def test_frame_shape_from_metadata_list_wins_over_the_data():
    settings = merge(BASE, {"frame_shape": [16, 16]})
    assert settings.config((32, 32)).frame_shape == (16, 16)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"energy_kev": -1.0}, "energy_kev"),
        ({"energgy_kev": 9.0}, "energgy_kev"),
        ({"image_key": None}, "image_key"),
        ({"refine_iterations": -2}, "refine_iterations"),
        ({"refine_seconds": 0.0}, "refine_seconds"),
        ({"refine_seconds": "2"}, "refine_seconds"),
        ({"dp_orient": "sideways"}, "dp_orient"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_key(metadata, message):
    with pytest.raises(ValueError, match=message):
        merge(BASE, metadata)


def test_missing_geometry_is_named():
    with pytest.raises(ValueError, match="distance_m"):
        merge({k: v for k, v in BASE.items() if k != "distance_m"}, {})


# -------------------------------------------------------------- ingest queue
def test_queue_counts_every_frame_and_grows_instead_of_dropping():
    queue = IngestQueue(max_frames=4, full_wait_s=0.01)
    for i in range(10):
        queue.put(Values("run", str(i), [i], {}, frames=1))
    stats = queue.stats()
    assert stats.frames_in == 10 and len(queue) == 10
    assert stats.waits == 1  # one brief wait, then growth without waiting again
    assert stats.overflows == 6
    items = queue.take_all()
    assert [item.descriptor for item in items] == [str(i) for i in range(10)]
    stats = queue.stats()
    assert stats.frames_out == 10 and stats.max_frames_queued == 10


def test_queue_wait_ends_when_the_worker_drains():
    queue = IngestQueue(max_frames=2, full_wait_s=5.0)
    queue.put(Values("run", "d", [0], {}, frames=2))
    taken: list[Item] = []
    drainer = threading.Timer(0.05, lambda: taken.extend(queue.take_all()))
    drainer.start()
    started = time.perf_counter()
    queue.put(Values("run", "d", [1], {}, frames=1))
    waited = time.perf_counter() - started
    drainer.join(5)
    assert 0.02 < waited < 4.0
    assert queue.stats().overflows == 0 and len(taken) == 1


def test_queue_take_all_times_out_empty():
    queue = IngestQueue()
    assert queue.take_all(timeout=0.01) == []
    queue.put(Start("run", {"uid": "run"}))
    assert queue.pending_starts == 1
    assert [type(i) for i in queue.take_all(timeout=1.0)] == [Start]
    assert queue.pending_starts == 0


# ------------------------------------------------------------ frame assembly
def _frames(seqs, shape=(8, 8)):
    return [np.full(shape, s, dtype=np.uint32) for s in seqs]


def test_assembler_joins_images_and_positions_by_seq_num_in_any_order():
    asm = FrameAssembler("img", "x", "y", handler_registry())
    asm.add_descriptor("d1", "primary", {"img": {"shape": [8, 8]}, "x": {}, "y": {}})
    asm.add_values("d1", [3, 1], {"x": [30.0, 10.0], "y": [-3.0, -1.0]})
    asm.add_values("d1", [1, 2, 3], {"img": _frames([1, 2, 3])})
    frames, x, y = asm.collect()
    assert [int(f[0, 0]) for f in frames] == [1, 3]
    assert x.tolist() == [10.0, 30.0] and y.tolist() == [-1.0, -3.0]
    assert asm.collect() is None  # seq 2 waits for its position
    asm.add_values("d1", [2], {"x": [20.0], "y": [-2.0]})
    frames, x, _ = asm.collect()
    assert int(frames[0, 0, 0]) == 2 and x.tolist() == [20.0]
    asm.finish()
    assert (asm.announced, asm.ingested, asm.failed, asm.unmatched) == (3, 3, 0, 0)


def test_assembler_counts_bad_and_unmatched_frames():
    asm = FrameAssembler("img", "x", "y", handler_registry())
    asm.add_descriptor("d1", "primary", {"img": {"shape": [8, 8]}, "x": {}, "y": {}})
    images = _frames([1, 2, 3, 4]) + [np.zeros((4, 4))]
    asm.add_values("d1", [1, 2, 3, 4, 5], {"img": images})
    asm.add_values("d1", [1, 2, 3, 5], {"x": [0.0, np.nan, 1.0, 2.0], "y": [0.0, 0.0, 1.0, 2.0]})
    frames, _, _ = asm.collect()
    assert len(frames) == 2  # seq 2 has a NaN position, seq 5 the wrong shape
    asm.finish()
    assert (asm.announced, asm.ingested, asm.failed, asm.unmatched) == (5, 2, 2, 1)
    assert any("not finite" in r for r in asm.reasons)
    assert any("frame shape" in r for r in asm.reasons)


def test_assembler_reads_npy_seq_datums_and_retries_missing_files(tmp_path):
    asm = FrameAssembler("img", "x", "y", handler_registry())
    asm.add_descriptor("d1", "primary", {"img": {"shape": [8, 8], "external": "FILESTORE:"}})
    asm.add_resource(
        {
            "uid": "r1",
            "spec": "NPY_SEQ",
            "root": str(tmp_path),
            "resource_path": "stem",
            "resource_kwargs": {},
        }
    )
    for i in range(3):
        asm.add_datum(f"r1/{i}", "r1", {"index": i})
    asm.add_values(
        "d1", [1, 2, 3], {"img": ["r1/0", "r1/1", "r1/2"], "x": [0, 1, 2], "y": [0, 0, 0]}
    )
    np.save(tmp_path / "stem_0.npy", _frames([7])[0])
    frames, _, _ = asm.collect()
    assert len(frames) == 1 and asm.pending_reads == 2  # the other files are not written yet
    np.save(tmp_path / "stem_1.npy", _frames([8])[0])
    frames, _, _ = asm.collect()
    assert int(frames[0, 0, 0]) == 8
    asm.give_up()
    assert asm.collect() is None
    asm.finish()
    assert (asm.ingested, asm.failed, asm.unmatched) == (2, 1, 0)


def test_assembler_names_a_missing_handler():
    asm = FrameAssembler("img", "x", "y", {"NPY_SEQ": NumpySeqHandler})
    asm.add_descriptor("d1", "primary", {"img": {"shape": [8, 8]}})
    asm.add_resource({"uid": "r1", "spec": "AD_EIGER", "root": "", "resource_path": "f"})
    asm.add_datum("r1/0", "r1", {"seq_id": 1})
    asm.add_values("d1", [1], {"img": ["r1/0"], "x": [0.0], "y": [0.0]})
    assert asm.collect() is None
    assert asm.failed == 1 and "AD_EIGER" in asm.reasons[0]


def test_assembler_reads_stream_datum_ranges_from_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = np.stack(_frames(range(1, 5)))
        f["/entry/x"] = np.arange(1, 5, dtype=float)
    asm = FrameAssembler("img", "x", "y", handler_registry())
    asm.add_descriptor(
        "d1", "primary", {"img": {"shape": [1, 8, 8]}, "x": {"shape": [1]}, "y": {"shape": []}}
    )
    uri = f"file://localhost{path}"
    asm.add_stream_resource(
        {
            "uid": "s1",
            "data_key": "img",
            "mimetype": "application/x-hdf5",
            "uri": uri,
            "parameters": {"dataset": "/entry/data/data"},
        }
    )
    asm.add_stream_resource(
        {
            "uid": "s2",
            "data_key": "x",
            "mimetype": "application/x-hdf5",
            "uri": uri,
            "parameters": {"dataset": "/entry/x"},
        }
    )
    for uid in ("s1", "s2"):
        asm.add_stream_datum(
            {
                "stream_resource": uid,
                "descriptor": "d1",
                "indices": {"start": 1, "stop": 4},
                "seq_nums": {"start": 2, "stop": 5},
            }
        )
    asm.add_values("d1", [2, 3, 4], {"y": [0.5, 0.5, 0.5]})
    frames, x, y = asm.collect()
    assert [int(f[0, 0]) for f in frames] == [2, 3, 4]
    assert x.tolist() == [2.0, 3.0, 4.0] and y.tolist() == [0.5] * 3
    asm.finish()


# ----------------------------------------------------------------- publisher
def _snapshot(iteration: int) -> Snapshot:
    return Snapshot(
        object=np.ones((12, 12), np.complex64),
        probe=np.ones((8, 8), np.complex64),
        coverage=np.ones((12, 12), np.float32),
        iteration=iteration,
        n_frames=4,
        origin_m=(0.0, 0.0),
        pixel_m=(1e-8, 1e-8),
        metrics={"poisson_nll": 1.0, "history": [{"poisson_nll": 1.0}] * iteration},
    )


def test_publisher_live_snapshots_are_latest_wins_and_the_end_is_never_skipped():
    release = threading.Event()
    docs: list[tuple[str, dict]] = []

    def slow_emit(name: str, doc: dict) -> None:
        release.wait(5)
        docs.append((name, doc))

    publisher = SnapshotPublisher(slow_emit)
    publisher.begin("raw", {"uid": "raw", "scan_id": 3}, {"energy_kev": 9.0})
    for i in range(1, 6):
        publisher.offer("raw", _snapshot(i), Progress())
    publisher.end("raw", _snapshot(9), Progress(frames_received=4), "success", "")
    release.set()
    assert publisher.flush(timeout=10)
    assert publisher.close(timeout=10)
    names = [n for n, _ in docs]
    assert names[0] == "start" and names[-1] == "stop"
    progress = [d["data"]["iteration"] for n, d in docs if n == "event" and "final" in d["data"]]
    assert progress[-1] == 9 and len(progress) < 6  # intermediate snapshots superseded
    assert publisher.superseded >= 3
    assert docs[0][1]["derived_from"] == "raw" and docs[0][1]["raw_scan_id"] == 3


def test_publisher_survives_a_failing_emit():
    def bad_emit(name: str, doc: dict) -> None:
        raise RuntimeError("sink down")

    publisher = SnapshotPublisher(bad_emit)
    publisher.begin("raw", {"uid": "raw"}, {})
    publisher.end("raw", _snapshot(1), Progress(), "success", "")
    assert publisher.flush(timeout=10)
    assert publisher.emit_errors >= 4
    assert publisher.close(timeout=10)


def test_profile_snippet_uses_only_accepted_keywords():
    import ast
    from pathlib import Path

    from bluesky_ptycho.callback import CallbackOptions

    path = Path(__file__).resolve().parents[1] / "profile_snippets" / "50-ptycho.py"
    tree = ast.parse(path.read_text())
    (call,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "PtychoCallback"
    ]
    named = {k.arg for k in call.keywords}
    options = set(CallbackOptions.field_names())
    assert named and named <= options | set(allowed_keys())
    assert {"energy_kev", "distance_m", "detector_pixel_m", "image_key", "x_key", "y_key"} <= named
