"""CXI read/write: round trip, overrides, and clear errors for missing fields."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from bluesky_ptycho import ReconConfig
from bluesky_ptycho.cxi import (
    DATA,
    DETECTOR_DATA,
    DISTANCE,
    ENERGY,
    JOULE_PER_KEV,
    TRANSLATION,
    X_PIXEL,
    Y_PIXEL,
    read_cxi,
    read_cxi_truth,
    write_cxi,
)
from bluesky_ptycho.sim.sample import default_config, simulate_scan


def _scan(n: int = 5, size: int = 16, mask: bool = True):
    rng = np.random.default_rng(1)
    frames = rng.poisson(50.0, (n, size, size)).astype(np.uint32)
    positions = rng.uniform(-1e-6, 1e-6, (n, 2))
    good = np.ones((size, size), np.uint8)
    good[3, 4] = 0
    config = ReconConfig(
        energy_kev=8.5,
        distance_m=1.2,
        detector_pixel_m=55e-6,
        frame_shape=(size, size),
        mask=good if mask else None,
    )
    return frames, positions, config


def test_round_trip(tmp_path):
    frames, positions, config = _scan()
    truth = (np.arange(12 * 10).reshape(12, 10) * (1 + 1j)).astype(np.complex64)
    path = write_cxi(
        tmp_path / "scan.cxi", frames, positions, config, truth, truth_origin_m=(-1e-7, 2e-7)
    )
    assert path == tmp_path / "scan.cxi"
    out_frames, x, y, cfg = read_cxi(path, dp_orient="rot90_cw", x_direction=-1)
    assert isinstance(out_frames, np.ndarray)
    np.testing.assert_array_equal(out_frames, frames)
    assert out_frames.dtype == frames.dtype
    np.testing.assert_array_equal(x, positions[:, 0])
    np.testing.assert_array_equal(y, positions[:, 1])
    assert cfg.energy_kev == pytest.approx(8.5, rel=1e-12)
    assert cfg.distance_m == 1.2 and cfg.detector_pixel_m == 55e-6
    assert cfg.frame_shape == (16, 16)
    assert cfg.position_scale_m == 1.0
    assert (cfg.dp_orient, cfg.x_direction, cfg.y_direction) == ("rot90_cw", -1, 1)
    np.testing.assert_array_equal(cfg.mask != 0, config.mask != 0)
    got_truth, origin = read_cxi_truth(path)
    np.testing.assert_array_equal(got_truth, truth)
    assert origin == (-1e-7, 2e-7)


def test_standard_fields_and_units(tmp_path):
    frames, positions, config = _scan()
    path = write_cxi(tmp_path / "scan.cxi", frames, positions, config)
    with h5py.File(path, "r") as f:
        assert f["cxi_version"][()] == 150
        np.testing.assert_array_equal(f[DATA][()], frames)
        np.testing.assert_array_equal(f[DETECTOR_DATA][()], frames)
        translation = f[TRANSLATION][()]
        assert translation.shape == (5, 3)
        # the CXI specification: the sample's translation, minus the probe position
        np.testing.assert_array_equal(translation[:, :2], -positions)
        assert f[TRANSLATION].attrs["positions"] == "sample-translation"
        assert f[ENERGY][()] == pytest.approx(8.5 * JOULE_PER_KEV)
        assert f[ENERGY].attrs["units"] == "J"
        assert f[DISTANCE][()] == 1.2
        assert f[X_PIXEL][()] == f[Y_PIXEL][()] == 55e-6
        mask = f["/entry_1/instrument_1/detector_1/mask"][()]
        assert mask[3, 4] == 1 and mask.sum() == 1  # CXI: nonzero = bad pixel
        assert "/entry_1/sample_1/simulation" not in f
    assert read_cxi_truth(path) is None


def test_lazy_frames_stay_in_file(tmp_path):
    frames, positions, config = _scan(mask=False)
    path = write_cxi(tmp_path / "scan.cxi", frames, positions, config)
    lazy, x, y, cfg = read_cxi(path, lazy=True)
    try:
        assert isinstance(lazy, h5py.Dataset)
        np.testing.assert_array_equal(lazy[1:3], frames[1:3])
    finally:
        lazy.file.close()
    assert cfg.mask is None


def test_simulated_scan_positions_and_truth(tmp_path):
    scan = simulate_scan(default_config(16), n_frames=12)
    path = scan.write_cxi(tmp_path / "sim.cxi")
    frames, x, y, cfg = read_cxi(path)
    np.testing.assert_array_equal(frames, scan.frames)
    scale = scan.config.position_scale_m
    np.testing.assert_allclose(x, scan.x_motor * scale * scan.config.x_direction)
    np.testing.assert_allclose(y, scan.y_motor * scale * scan.config.y_direction)
    assert cfg.object_pixel_m == pytest.approx(scan.config.object_pixel_m, rel=1e-9)
    truth, origin = read_cxi_truth(path)
    np.testing.assert_array_equal(truth, scan.sample.object)
    # without an explicit origin, write_cxi assumes the sample's centred convention
    assert origin == pytest.approx(scan.sample.origin_m, rel=1e-12)


@pytest.mark.parametrize("field", [ENERGY, DISTANCE, X_PIXEL, Y_PIXEL, TRANSLATION, DATA])
def test_missing_field_is_named(tmp_path, field):
    frames, positions, config = _scan()
    path = write_cxi(tmp_path / "scan.cxi", frames, positions, config)
    with h5py.File(path, "a") as f:
        del f[field]
        if field == DATA:
            del f[DETECTOR_DATA]
        if field == TRANSLATION:
            del f["/entry_1/data_1/translation"]
    with pytest.raises(ValueError, match="is missing") as info:
        read_cxi(path)
    assert field in str(info.value) and str(path) in str(info.value)


def test_bad_inputs(tmp_path):
    frames, positions, config = _scan()
    with pytest.raises(ValueError, match="does not exist"):
        read_cxi(tmp_path / "nope.cxi")
    (tmp_path / "text.cxi").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        read_cxi(tmp_path / "text.cxi")
    path = write_cxi(tmp_path / "scan.cxi", frames, positions, config)
    with pytest.raises(ValueError, match="unknown ReconConfig field"):
        read_cxi(path, dp_orientation="rot90_cw")
    with pytest.raises(ValueError, match="position_scale_m"):
        read_cxi(path, position_scale_m=1e-6)
    with pytest.raises(ValueError, match="positions_m"):
        write_cxi(tmp_path / "bad.cxi", frames, positions[:, :1], config)
    with pytest.raises(ValueError, match="frames"):
        write_cxi(tmp_path / "bad.cxi", frames[:, :8], positions, config)
    with h5py.File(path, "a") as f:
        del f[TRANSLATION]
        del f["/entry_1/data_1/translation"]
        f[TRANSLATION] = np.zeros((4, 3))
    with pytest.raises(ValueError, match="one per frame"):
        read_cxi(path)


def test_non_square_pixels_rejected(tmp_path):
    frames, positions, config = _scan()
    path = write_cxi(tmp_path / "scan.cxi", frames, positions, config)
    with h5py.File(path, "a") as f:
        f[Y_PIXEL][()] = 75e-6
    with pytest.raises(ValueError, match="non-square"):
        read_cxi(path)
