"""Tiled live nodes and the derived run's snapshots, against a real embedded Tiled server."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import stamina
from bluesky.callbacks.buffer import BufferingWrapper
from bluesky_tiled_plugins import TiledWriter
from ptycho_support import WAIT_S, Recorder, stop_of
from tiled_support import TiledServer, simulated_scan

from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.engine.reconstructor import Snapshot
from bluesky_ptycho.metrics import snapshot_nrmse
from bluesky_ptycho.outputs import Progress
from bluesky_ptycho.outputs.previews import PREVIEW_PX
from bluesky_ptycho.outputs.tiled_nodes import HISTORY_COLUMNS, TiledLiveNodes

POINTS = 80

#: websockets 15 warns about tiled 0.2.20's subscription (in its thread); not ours to fix
pytestmark = pytest.mark.filterwarnings(
    "ignore:connect\\(\\) must be used as a context manager:DeprecationWarning"
)


@pytest.fixture
def own_server(tmp_path):
    """A server of this test's own (it is stopped and restarted)."""
    served = TiledServer(tmp_path / "tiled")
    yield served
    served.close()


@pytest.fixture
def no_client_retries():
    """The Tiled client retries a failed request for up to 45 s (stamina); our writer has
    its own back-off, so let each request fail at once while the server is down."""
    stamina.set_testing(True, attempts=1)
    yield
    stamina.set_testing(False)


def test_live_nodes_change_during_the_scan_and_final_appears(tiled_server):
    server = tiled_server
    client = server.client()
    if "ptycho" not in client:
        client.create_container("ptycho")
    updates: list[dict] = []
    covered_seen: list[int] = []  # covered live pixels, read from the subscription thread

    def on_metadata(update) -> None:  # subscription thread
        updates.append({"key": update.key, "thread": threading.get_ident(), **update.metadata})
        if update.metadata.get("status") == "running" and update.metadata.get("iteration"):
            coverage = client["ptycho"][update.key]["live"]["coverage"].read()
            covered_seen.append(int((coverage >= 0.1).sum()))

    subscription = client["ptycho"].subscribe()
    subscription.child_metadata_updated.add_callback(on_metadata)  # held weakly: kept here
    subscription.start_in_thread(start=1)
    beamline, RE, plan, md = simulated_scan(POINTS)
    raw_writer = BufferingWrapper(TiledWriter(client, batch_size=20))
    derived_writer = TiledWriter(client, batch_size=5)
    callback = PtychoCallback(
        derived_writer,
        backend="numpy",
        refine_iterations=30,
        snapshot_interval_s=0.15,  # several updates even when a loaded host runs the scan fast
        tiled=TiledLiveNodes(server.uri, interval_s=0.1),
    )
    RE.subscribe(raw_writer)
    RE.subscribe(callback)
    try:
        (raw_uid,) = RE(plan, ptycho=md, scan_id=42)
        raw_writer.shutdown(wait=True)
        assert callback.wait(timeout=WAIT_S)
        nodes = callback._publisher.nodes
        assert nodes.flush(timeout=WAIT_S)
    finally:
        assert callback.close(timeout=WAIT_S)
        subscription.disconnect()
    result = callback.last_result
    assert result.exit_status == "success" and result.frames_ingested == POINTS

    # the subscriber, in another thread, saw the run's node change while the scan ran
    mine = [u for u in updates if u["key"] == raw_uid]
    assert mine and {u["thread"] for u in mine} != {threading.get_ident()}
    running = [u for u in mine if u.get("status") == "running" and u.get("iteration")]
    assert len(running) >= 3
    assert any(u["frames_received"] < POINTS for u in running)
    assert [u["iteration"] for u in running] == sorted(u["iteration"] for u in running)
    assert running[0]["n_frames"] < running[-1]["n_frames"] == POINTS
    assert len(covered_seen) >= 2 and covered_seen[0] < covered_seen[-1]  # the image grows
    assert mine[-1]["status"] == "success"

    node = client["ptycho"][raw_uid]
    assert node.metadata["scan_id"] == 42 and node.metadata["derived_uid"] == result.derived_uid
    assert node.metadata["iteration"] == result.iterations
    final = node["final"]["object"].read()
    assert final.dtype == np.complex64 and np.isfinite(final).all()
    snapshot = result.snapshot
    np.testing.assert_allclose(final, snapshot.object.astype(np.complex64), rtol=1e-6)
    assert node["final"]["probe"].read().dtype == np.complex64
    history = node["live"]["error_history"].read()
    assert history.shape == (result.iterations, len(HISTORY_COLUMNS))
    np.testing.assert_array_equal(history[:, 0], np.arange(1, result.iterations + 1))
    amplitude = node["live"]["object_amplitude"].read()
    assert amplitude.shape == final.shape and list(node.metadata["origin_m"]) == list(
        snapshot.origin_m
    )

    # the derived run, with its snapshot images, next to its raw run
    derived = client[result.derived_uid]
    assert derived.metadata["start"]["derived_from"] == raw_uid
    assert tuple(client[raw_uid]["primary"]["det_image"].shape) == (POINTS, 64, 64)
    images = derived["snapshots"]["snapshot_amplitude"].read()
    coverage = derived["snapshots"]["snapshot_coverage"].read()
    assert images.shape[1:] == (PREVIEW_PX, PREVIEW_PX) and images.shape[0] >= 3
    covered = (coverage >= 0.1).sum(axis=(1, 2))
    assert covered[0] < covered[-1]  # the image grows
    assert derived["primary"]["object_amplitude"].shape[1:] == snapshot.object.shape
    assert snapshot_nrmse(snapshot, beamline.sample.object, beamline.sample.origin_m) <= 0.10


def test_server_stopped_mid_scan_then_restarted(own_server, no_client_retries):
    server = own_server
    beamline, RE, plan, md = simulated_scan(POINTS, exposure_s=0.02)
    recorder = Recorder()
    nodes = TiledLiveNodes(server.uri, interval_s=0.1, retry_s=(0.2, 1.0))
    callback = PtychoCallback(
        recorder, backend="numpy", refine_iterations=20, snapshot_interval_s=0.2, tiled=nodes
    )
    stopped = threading.Event()

    def stop_server_mid_scan(name: str, doc: dict) -> None:
        if name == "event" and doc["seq_num"] == POINTS // 3 and not stopped.is_set():
            stopped.set()
            threading.Thread(target=server.stop, daemon=True).start()

    RE.subscribe(callback)
    RE.subscribe(stop_server_mid_scan)
    try:
        started = time.perf_counter()
        (raw_uid,) = RE(plan, ptycho=md)
        scan_s = time.perf_counter() - started
        assert callback.wait(timeout=WAIT_S)
        assert not nodes.flush(timeout=1.0)  # the server is still down: writes pending
        docs = recorder.of(raw_uid)
        stop = stop_of(docs)
        result = callback.last_result
        assert stopped.is_set() and scan_s < 30
        assert result.exit_status == "success" and result.frames_ingested == POINTS
        assert stop["exit_status"] == "success"
        assert "Tiled live nodes: 1 outage(s)" in stop["reason"], stop["reason"]
        assert "still unreachable" in stop["reason"]
        assert (
            snapshot_nrmse(result.snapshot, beamline.sample.object, beamline.sample.origin_m) < 0.15
        )

        server.start()  # same folder, port and API key
        assert nodes.flush(timeout=WAIT_S)
    finally:
        assert callback.close(timeout=WAIT_S)
    node = server.client()["ptycho"][raw_uid]
    assert node.metadata["status"] == "success"
    assert node.metadata["iteration"] == result.iterations
    (outage,) = node.metadata["outages"]
    assert outage["ended"] is not None and outage["ended"] > outage["started"]
    assert node["final"]["object"].shape == result.snapshot.object.shape
    assert node["live"]["error_history"].shape[0] == result.iterations


def synthetic_snapshot(shape, origin_m, iteration, seed=0) -> Snapshot:
    rng = np.random.default_rng(seed)
    obj = (rng.random(shape) + 0.5) * np.exp(1j * rng.random(shape))
    obj[:3, :] = np.nan  # unreached rows
    coverage = np.where(np.isfinite(obj), 1.0, 0.0).astype(np.float32)
    history = [
        {"iteration": i + 1, "poisson_nll": 10.0 / (i + 1), "n_frames": 5} for i in range(iteration)
    ]
    return Snapshot(
        object=obj.astype(np.complex64),
        probe=np.ones((8, 8), np.complex64),
        coverage=coverage,
        iteration=iteration,
        n_frames=5,
        origin_m=origin_m,
        pixel_m=(1e-8, 1e-8),
        metrics={"history": history, "poisson_nll": 1.0},
    )


def test_growing_canvas_replaces_the_live_arrays_and_large_images_are_binned(tiled_server):
    client = tiled_server.client()
    nodes = TiledLiveNodes(tiled_server.uri, "growing", interval_s=0.0, max_array_bytes=4000)
    try:
        nodes.begin("run-a", {"uid": "run-a", "scan_id": 3}, {"energy_kev": 9.0}, "derived-a")
        small = synthetic_snapshot((20, 30), (-1e-7, -2e-7), iteration=2)
        nodes.offer("run-a", small, Progress(frames_received=5))
        assert nodes.flush(timeout=WAIT_S)
        live = client["growing"]["run-a"]["live"]
        assert live["object_amplitude"].shape == (20, 30)  # 2,400 bytes: not binned
        grown = synthetic_snapshot((50, 60), (-3e-7, -4e-7), iteration=5, seed=1)
        nodes.offer("run-a", grown, Progress(frames_received=9))
        assert nodes.flush(timeout=WAIT_S)
        node = client["growing"]["run-a"]
        live = node["live"]
        # 50 x 60 float32 = 12,000 bytes > 4,000: binned 2 x 2 (3 x 3 would be the next)
        assert live["object_amplitude"].shape == (25, 30) and node.metadata["live_binning"] == 2
        assert list(node.metadata["origin_m"]) == [-3e-7, -4e-7]
        assert list(node.metadata["live_pixel_size_m"]) == [2e-8, 2e-8]
        # the complex field is averaged over each block (a block below the NaN rows)
        expected = np.abs(grown.object[4:6, 0:2].mean())
        assert live["object_amplitude"].read()[2, 0] == pytest.approx(expected, rel=1e-5)
        assert np.isnan(live["object_amplitude"].read()[0, 0])  # all-NaN block stays NaN
        assert live["error_history"].read()[:, 0].tolist() == [1, 2, 3, 4, 5]  # extended
        nodes.end("run-a", grown, Progress(frames_received=9), "success", "")
        assert nodes.flush(timeout=WAIT_S)
        node = client["growing"]["run-a"]  # a client node keeps the metadata it was read with
        assert node.metadata["status"] == "success" and node.metadata["scan_id"] == 3
        assert node["final"]["object"].shape == (50, 60)  # full size
    finally:
        assert nodes.close(timeout=WAIT_S)
