"""``bluesky-ptycho view --png`` on a live scan, and the document-fed LiveViewer: the PNGs
read back show the covered object growing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from ptycho_support import WAIT_S, Recorder
from subprocess_support import PACKAGE_ROOT
from tiled_support import simulated_scan

from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.outputs.tiled_nodes import TiledLiveNodes
from bluesky_ptycho.viewer import LiveViewer

POINTS = 80
#: event -> viewer frames that must exist before the scan goes on (waits up to WAIT_S)
PAUSE_AT = {12: 1, 40: 2}
#: least ratio of the covered region's bounding box, last frame over first
MIN_GROWTH = 1.5

pytestmark = pytest.mark.filterwarnings(
    "ignore:connect\\(\\) must be used as a context manager:DeprecationWarning"
)


def covered_span_um2(png) -> tuple[float, dict]:
    """Bounding box (um^2) of the covered object in a viewer PNG: the amplitude panel's
    non-black image pixels, scaled by the panel's extent (from the PNG's text)."""
    image = Image.open(png)
    info = json.loads(image.text["Description"])
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    height, width = rgb.shape[:2]
    left, bottom, w, h = info["amplitude_rect"]
    box = rgb[
        int((1 - bottom - h) * height) + 3 : int((1 - bottom) * height) - 3,
        int(left * width) + 3 : int((left + w) * width) - 3,
    ]
    shown = ~(box > 0.97).all(axis=2)  # the image (the panel's background is white)
    # covered pixels are viridis colours; uncovered ones black, the frame black or grey
    covered = box.max(axis=2) - box.min(axis=2) > 0.1
    x0, x1, y1, y0 = info["extent_um"]
    size_um = []
    for axis, extent_um in ((0, abs(y1 - y0)), (1, abs(x1 - x0))):
        image_px = np.flatnonzero(shown.any(axis=1 - axis))
        covered_px = np.flatnonzero(covered.any(axis=1 - axis))
        span = (covered_px[-1] - covered_px[0] + 1) / (image_px[-1] - image_px[0] + 1)
        size_um.append(span * extent_um)
    return float(size_um[0] * size_um[1]), info


def test_view_png_follows_a_live_scan(tiled_server, tmp_path):
    server = tiled_server
    client = server.client()
    client.create_container("viewtest")  # a path of its own: --latest must see this run only
    frames_dir = tmp_path / "frames"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")])
    )
    command = [sys.executable, "-m", "bluesky_ptycho.cli", "view", "--tiled", server.uri]
    command += [
        "--latest",
        "--path",
        "viewtest",
        "--png",
        str(frames_dir),
        "--timeout",
        str(WAIT_S),
    ]
    viewer = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert "watching" in viewer.stdout.readline()  # subscribed: start the scan
        beamline, RE, plan, md = simulated_scan(POINTS, exposure_s=0.03)
        recorder = Recorder()
        callback = PtychoCallback(
            recorder,
            backend="numpy",
            refine_iterations=20,
            snapshot_interval_s=0.3,
            scan_duty_cycle=0.3,  # leave the 2 cores to the scan and the in-process server
            tiled=TiledLiveNodes(server.uri, "viewtest", interval_s=0.3),
        )
        RE.subscribe(callback)

        def slow_scan(name: str, doc: dict) -> None:
            """A scan slow enough for a viewer on a loaded machine: at a few points the
            RunEngine waits until the viewer has written enough frames."""
            if name == "event" and doc["seq_num"] in PAUSE_AT:
                deadline = time.monotonic() + WAIT_S
                while time.monotonic() < deadline:
                    if len(list(frames_dir.glob("*.png"))) >= PAUSE_AT[doc["seq_num"]]:
                        break
                    time.sleep(0.1)

        RE.subscribe(slow_scan)
        (raw_uid,) = RE(plan, ptycho=md)
        assert callback.wait(timeout=WAIT_S)
        assert callback.close(timeout=WAIT_S)
        out, err = viewer.communicate(timeout=WAIT_S)
    finally:
        viewer.kill()
    assert viewer.returncode == 0, err
    pngs = sorted(frames_dir.glob("*.png"))
    assert len(pngs) >= 3, out
    areas, infos = zip(*(covered_span_um2(p) for p in pngs), strict=True)
    assert all(i["raw_uid"] == raw_uid for i in infos)
    assert infos[-1]["status"] == "success" and infos[-1]["n_frames"] == POINTS
    assert infos[0]["n_frames"] < POINTS
    # the covered object grows frame by frame; never shrinks beyond pixel noise
    print("covered bounding box (um^2) by frame:", [round(a, 3) for a in areas])
    assert areas[-1] >= MIN_GROWTH * areas[0], areas
    assert all(b >= 0.97 * a for a, b in zip(areas, areas[1:], strict=False)), areas

    # the same run's derived documents drawn by the profile's viewer (no window here)
    viewer_cb = LiveViewer(png_dir=tmp_path / "docs", window=False)
    for name, doc in recorder.of(raw_uid):
        viewer_cb(name, doc)
    doc_pngs = sorted((tmp_path / "docs").glob("*.png"))
    assert len(doc_pngs) >= 3 and viewer_cb.latest.status == "success"
    doc_areas = [covered_span_um2(p)[0] for p in doc_pngs]
    assert doc_areas[-1] >= MIN_GROWTH * doc_areas[0], doc_areas


def test_torn_live_images_are_read_again():
    # a writer between creating a grown array and writing its data: zeros at first
    from bluesky_ptycho.viewer import state

    class Array:
        def __init__(self, *reads):
            self.reads = list(reads)

        def read(self):
            return self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]

    good = np.ones((4, 5), np.float32)
    live = {
        "coverage": Array(np.zeros((4, 5), np.float32), good),
        "object_amplitude": Array(np.ones((3, 3)), good * 2),
        "object_phase": Array(np.ones((3, 3)), good * 3),
    }
    coverage, amplitude, phase = state._consistent_images(live, frames=7)
    assert (coverage == good).all() and (amplitude == 2).all() and (phase == 3).all()


def test_history_rows_read_while_the_writer_appends(tiled_server):
    # a viewer's node of live/error_history, then the writer appends rows: a plain
    # read() sends the stale shape and Tiled's client retries the 500 for 45 s
    from bluesky_ptycho.viewer import state

    client = tiled_server.client()
    container = client.create_container("history-race")
    rows = np.arange(25.0).reshape(5, 5)
    writer = container.write_array(rows, key="error_history")
    stale = tiled_server.client()["history-race"]["error_history"]
    writer.patch(rows + 100, offset=(5,), extend=True)
    started = time.monotonic()
    read = state.history_rows(stale)
    assert time.monotonic() - started < 10
    np.testing.assert_array_equal(read, rows)
    fresh = client["history-race"]["error_history"]
    np.testing.assert_array_equal(state.history_rows(fresh)[5:], rows + 100)
