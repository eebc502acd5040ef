"""The simulated beamline: motors, the three detectors, and the documents they produce."""

from __future__ import annotations

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine

from bluesky_ptycho.callback.handlers import NumpySeqHandler
from bluesky_ptycho.sim.beamline import make_beamline
from bluesky_ptycho.sim.hdf5_detector import fly_scan

FRAME = 32
PHOTONS = 1e6


@pytest.fixture(scope="module")
def beamline():
    return make_beamline(FRAME, max_points=50, photons_per_frame=PHOTONS, seed=1)


@pytest.fixture
def RE():
    return RunEngine({})


def record(RE):
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return docs


def test_positions_are_a_centred_spiral_in_micrometres(beamline):
    x, y = beamline.positions_um(50)
    assert x.shape == y.shape == (50,)
    assert (x[0], y[0]) == (0.0, 0.0)
    step_um = beamline.step_m / beamline.config.position_scale_m
    assert 0.3 * step_um < np.hypot(np.diff(x), np.diff(y)).min()
    md = beamline.metadata("det_image")
    assert md["energy_kev"] == beamline.config.energy_kev and md["x_key"] == "sx"


def test_frames_are_poisson_counts_of_the_known_sample(beamline):
    frame = beamline.frame_at(0.1, -0.2)
    assert frame.dtype == np.uint32 and frame.shape == (FRAME, FRAME)
    expected = beamline.sample.expected_intensity(0.1, -0.2)
    assert abs(frame.sum() - expected.sum()) < 5 * np.sqrt(expected.sum())
    assert not np.array_equal(frame, beamline.frame_at(0.1, -0.2))  # noise differs


def test_inline_detector_puts_frames_in_events(RE, beamline):
    docs = record(RE)
    detector = beamline.inline_detector()
    RE(bp.list_scan([detector], beamline.sx, [0.0, 0.3], beamline.sy, [0.0, 0.1]))
    (descriptor,) = [d for n, d in docs if n == "descriptor"]
    key = descriptor["data_keys"]["det_image"]
    assert key["shape"] == [FRAME, FRAME] and key["dtype_numpy"] == "<u4"
    events = [d for n, d in docs if n == "event"]
    assert len(events) == 2
    assert events[1]["data"]["det_image"].shape == (FRAME, FRAME)
    assert events[1]["data"]["sx"] == pytest.approx(0.3)


def test_file_detector_writes_npy_seq_resource_and_datums(RE, beamline, tmp_path):
    docs = record(RE)
    detector = beamline.file_detector(tmp_path)
    RE(bp.count([detector], num=3))
    (resource,) = [d for n, d in docs if n == "resource"]
    assert resource["spec"] == "NPY_SEQ"
    datums = [d for n, d in docs if n == "datum"]
    events = [d for n, d in docs if n == "event"]
    assert [e["data"]["fdet_image"] for e in events] == [d["datum_id"] for d in datums]
    handler = NumpySeqHandler(resource["resource_path"], root=resource["root"])
    frame = handler(**datums[2]["datum_kwargs"])
    assert frame.shape == (FRAME, FRAME) and frame.sum() > 0.2 * PHOTONS
    (descriptor,) = [d for n, d in docs if n == "descriptor"]
    assert descriptor["data_keys"]["fdet_image"]["external"].startswith("FILESTORE")


def test_hdf5_detector_step_scan_records_frames_and_positions(RE, beamline, tmp_path):
    docs = record(RE)
    detector = beamline.hdf5_detector(tmp_path)
    xs, ys = [0.0, 0.2, 0.4], [0.0, -0.1, 0.1]
    RE(bp.list_scan([detector], beamline.sx, xs, beamline.sy, ys))
    resources = {d["data_key"]: d for n, d in docs if n == "stream_resource"}
    assert set(resources) == {"xdet", "xdet-x", "xdet-y"}
    datums = [d for n, d in docs if n == "stream_datum"]
    assert len(datums) == 9
    assert [e["seq_num"] for n, e in docs if n == "event"] == [1, 2, 3]
    path = resources["xdet"]["uri"].removeprefix("file://localhost")
    with h5py.File(path, "r") as f:
        assert f["/entry/data/data"].shape == (3, FRAME, FRAME)
        assert f["/entry/positions/x"][:] == pytest.approx(xs)
        assert f["/entry/positions/y"][:] == pytest.approx(ys)


def test_hdf5_detector_fly_scan_has_no_events(RE, beamline, tmp_path):
    docs = record(RE)
    detector = beamline.hdf5_detector(tmp_path)
    x, y = beamline.positions_um(20)
    RE(fly_scan(detector, x, y, exposure_s=0.001))
    names = [n for n, _ in docs]
    assert "event" not in names and names[-1] == "stop"
    datums = [d for n, d in docs if n == "stream_datum"]
    assert sum(d["indices"]["stop"] - d["indices"]["start"] for d in datums) == 3 * 20
    image = [d for n, d in docs if n == "stream_resource" and d["data_key"] == "xdet"][0]
    with h5py.File(image["uri"].removeprefix("file://localhost"), "r") as f:
        assert f["/entry/data/data"].shape == (20, FRAME, FRAME)
        assert f["/entry/positions/x"][:] == pytest.approx(x)
