"""CXI files written the way other codes write them, read back and reconstructed.

The layouts follow the codes' documented writers (no code of theirs is used):

* CDTools (``cdtools.tools.data``): ``cxi_version`` 160, frames in
  ``detector_1/data`` (gzip) with a soft link ``data_1/data``, energy in J as
  float32 beside the wavelength, ``basis_vectors`` (3, 2) and pixel sizes, a
  uint32 mask with 1 = bad pixel, and ``translation`` (n, 3) = the *sample's*
  translation (minus the probe positions), linked from ``data_1`` and
  ``detector_1``;
* PyNX (``save_ptycho_data_cxi``): ``cxi_version`` 140, ``translation`` of shape
  (3, n) float32 holding the *probe* positions x, y, z, ``basis_vectors`` (2, 3),
  a mask of invalid pixels only when any.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from bluesky_ptycho import Reconstructor, cli
from bluesky_ptycho.cxi import JOULE_PER_KEV, read_cxi, write_cxi
from bluesky_ptycho.metrics import snapshot_nrmse
from bluesky_ptycho.sim.sample import BEAMLINE_LIKE, default_config, simulate_scan

TARGET_NRMSE = 0.10


@pytest.fixture(scope="module")
def scan():
    return simulate_scan(default_config(64), n_frames=160, seed=5, **BEAMLINE_LIKE)


def probe_positions_m(scan) -> np.ndarray:
    cfg = scan.config
    return np.stack(
        [scan.x_motor * cfg.position_scale_m, scan.y_motor * cfg.position_scale_m], axis=1
    )


def bad_pixels(scan) -> np.ndarray:
    bad = np.zeros(scan.config.frame_shape, np.uint32)
    bad[scan.hot_pixels[:, 0], scan.hot_pixels[:, 1]] = 1
    return bad


def write_cdtools_style(path, scan) -> None:
    cfg = scan.config
    with h5py.File(path, "w") as f:
        f.create_dataset("cxi_version", data=160)
        f.create_dataset("number_of_entries", data=1)
        source = f.create_group("entry_1/instrument_1/source_1")
        source["wavelength"] = np.float32(cfg.wavelength_m)
        source["energy"] = np.float32(cfg.energy_kev * JOULE_PER_KEV)
        detector = f["entry_1/instrument_1"].create_group("detector_1")
        detector["distance"] = np.float32(cfg.distance_m)
        basis = np.array([[0, -cfg.detector_pixel_m], [-cfg.detector_pixel_m, 0], [0, 0]])
        detector["x_pixel_size"] = np.linalg.norm(basis[:, 1])
        detector["y_pixel_size"] = np.linalg.norm(basis[:, 0])
        detector.create_dataset("basis_vectors", data=basis)
        detector.create_dataset("mask", data=bad_pixels(scan))
        detector.create_dataset("data", data=scan.frames, compression="gzip", chunks=True)
        f.create_group("entry_1/data_1")["data"] = h5py.SoftLink(
            "/entry_1/instrument_1/detector_1/data"
        )
        translation = np.zeros((len(scan.x_motor), 3))
        translation[:, :2] = -probe_positions_m(scan)  # the sample moves the other way
        geometry = f.create_group("entry_1/sample_1/geometry_1")
        geometry.create_dataset("translation", data=translation)
        for group in ("entry_1/data_1", "entry_1/instrument_1/detector_1"):
            f[group]["translation"] = h5py.SoftLink("/entry_1/sample_1/geometry_1/translation")


def write_pynx_style(path, scan) -> None:
    cfg = scan.config
    with h5py.File(path, "w") as f:
        f.attrs["creator"] = "PyNX"
        f.create_dataset("cxi_version", data=140)
        xyz = np.zeros((3, len(scan.x_motor)), np.float32)
        xyz[:2] = probe_positions_m(scan).T
        f.create_group("entry_1/sample_1/geometry_1").create_dataset("translation", data=xyz)
        data_1 = f["entry_1"].create_group("data_1")
        data_1["translation"] = h5py.SoftLink("/entry_1/sample_1/geometry_1/translation")
        instrument = f["entry_1"].create_group("instrument_1")
        instrument.create_group("source_1").create_dataset(
            "energy", data=cfg.energy_kev * JOULE_PER_KEV
        )
        detector = instrument.create_group("detector_1")
        detector.create_dataset("data", data=scan.frames, chunks=(1, 64, 64), compression="gzip")
        detector.create_dataset("distance", data=cfg.distance_m)
        detector.create_dataset("x_pixel_size", data=cfg.detector_pixel_m)
        detector.create_dataset("y_pixel_size", data=cfg.detector_pixel_m)
        detector.create_dataset("mask", data=bad_pixels(scan))
        basis = np.zeros((2, 3), np.float32)
        basis[0, 1] = basis[1, 0] = -cfg.detector_pixel_m
        detector.create_dataset("basis_vectors", data=basis)
        detector["translation"] = h5py.SoftLink("/entry_1/sample_1/geometry_1/translation")
        data_1["data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")


@pytest.mark.parametrize(
    ("writer", "positions"),
    [(write_cdtools_style, "sample-translation"), (write_pynx_style, "probe-position")],
)
def test_files_of_other_codes_read_back_exactly(tmp_path, scan, writer, positions):
    path = tmp_path / "scan.cxi"
    writer(path, scan)
    frames, x, y, config = read_cxi(path, positions=positions)
    expected = probe_positions_m(scan)
    assert np.allclose(x, expected[:, 0], rtol=1e-6, atol=1e-12)
    assert np.allclose(y, expected[:, 1], rtol=1e-6, atol=1e-12)
    assert np.array_equal(frames, scan.frames)
    assert config.energy_kev == pytest.approx(scan.config.energy_kev, rel=1e-6)
    assert config.distance_m == pytest.approx(scan.config.distance_m, rel=1e-6)
    assert (config.mask == 0).sum() == len(scan.hot_pixels)  # CXI mask: nonzero = bad


@pytest.mark.parametrize(
    ("writer", "positions"),
    [(write_cdtools_style, "sample-translation"), (write_pynx_style, "probe-position")],
)
def test_files_of_other_codes_reconstruct_with_a_warm_probe(tmp_path, scan, writer, positions):
    path = tmp_path / "scan.cxi"
    writer(path, scan)
    right = read_cxi(path, positions=positions, probe=scan.sample.probe)
    wrong_convention = (
        "probe-position" if positions == "sample-translation" else "sample-translation"
    )
    wrong = read_cxi(path, positions=wrong_convention, probe=scan.sample.probe)

    def nrmse(read) -> float:
        frames, x, y, config = read
        rec = Reconstructor(config, backend="numpy")
        rec.add_frames(frames, x, y)
        rec.iterate(30)
        return snapshot_nrmse(rec.snapshot(), scan.sample.object, scan.sample.origin_m)

    assert nrmse(right) <= TARGET_NRMSE
    assert nrmse(wrong) > 3 * TARGET_NRMSE


def test_reconstruct_warns_when_the_other_convention_fits(tmp_path, scan, capsys):
    path = tmp_path / "pynx.cxi"
    write_pynx_style(path, scan)
    probe = tmp_path / "probe.npy"
    np.save(probe, scan.sample.probe)
    base = [str(path), "--probe", str(probe), "--iterations", "1", "--backend", "numpy"]
    # PyNX's translation read by the specification: negated positions fit better
    assert cli.main(["reconstruct", *base, "--output", str(tmp_path / "a.h5")]) == 0
    out = capsys.readouterr().out
    assert "rerun with --positions probe-position" in out
    with h5py.File(tmp_path / "a.h5") as f:
        assert f.attrs["positions"] == "sample-translation"
        assert f.attrs["position_check_negated_fits_better"]
    # read as PyNX means it: no warning, and the convention is recorded
    argv = [*base, "--positions", "probe-position", "--output", str(tmp_path / "b.h5")]
    assert cli.main(["reconstruct", *argv]) == 0
    assert "WARNING" not in capsys.readouterr().out
    with h5py.File(tmp_path / "b.h5") as f:
        assert f.attrs["positions"] == "probe-position"
        assert not f.attrs["position_check_negated_fits_better"]


def test_own_files_record_their_convention(tmp_path, scan):
    path = tmp_path / "probe.cxi"
    write_cxi(path, scan.frames, probe_positions_m(scan), scan.config, positions="probe-position")
    with h5py.File(path) as f:
        stored = f["/entry_1/sample_1/geometry_1/translation"]
        assert stored.attrs["positions"] == "probe-position"
        assert np.allclose(stored[:, 0], probe_positions_m(scan)[:, 0])
    _, x, _, _ = read_cxi(path)  # the attribute is honoured without an option
    assert np.allclose(x, probe_positions_m(scan)[:, 0])
    spec = tmp_path / "spec.cxi"
    write_cxi(spec, scan.frames, probe_positions_m(scan), scan.config)
    with h5py.File(spec) as f:
        assert np.allclose(
            f["/entry_1/sample_1/geometry_1/translation"][:, 0], -probe_positions_m(scan)[:, 0]
        )
    with pytest.raises(ValueError, match="positions must be one of"):
        read_cxi(spec, positions="probe")
