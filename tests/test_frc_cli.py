"""Half-scan resolution from the command line: reconstruct --subset even / odd, then frc."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from bluesky_ptycho import cli
from bluesky_ptycho.sim.sample import default_config, simulate_scan


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frc")
    scan = simulate_scan(default_config(32), n_frames=120, seed=3)
    path = scan.write_cxi(folder / "scan.cxi")
    outputs = {}
    for subset in ("even", "odd"):
        outputs[subset] = folder / f"{subset}.h5"
        argv = ["reconstruct", str(path), "--subset", subset, "--iterations", "30", "--quiet"]
        assert cli.main([*argv, "--backend", "numpy", "--output", str(outputs[subset])]) == 0
    return outputs


def test_subsets_hold_half_the_frames_each(halves):
    for subset, path in halves.items():
        with h5py.File(path) as f:
            assert f.attrs["n_frames"] == 60 and f.attrs["subset"] == subset


def test_frc_of_two_half_scans(halves, tmp_path, capsys):
    csv = tmp_path / "frc.csv"
    assert cli.main(["frc", str(halves["even"]), str(halves["odd"]), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    mean = float(out.split("Nyquist:")[1].split()[0])
    assert 0.5 < mean <= 1.0  # two converged halves of one sample agree
    curve = np.loadtxt(csv, delimiter=",", skiprows=1)
    assert curve[0, 0] == 0.0 and curve[-1, 0] == pytest.approx(1.0)
    assert np.all(np.abs(curve[:, 1]) <= 1.0 + 1e-9)


def test_frc_refuses_what_is_not_a_result(halves, tmp_path, capsys):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    assert cli.main(["frc", str(halves["even"]), str(other)]) == 1
    assert "not a `bluesky-ptycho reconstruct` result" in capsys.readouterr().err
