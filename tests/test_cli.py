"""``bluesky-ptycho`` command line: simulate -> reconstruct end to end, options, import hygiene."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from subprocess_support import run_python

import bluesky_ptycho
from bluesky_ptycho import cli
from bluesky_ptycho.cxi import read_cxi

#: same scan and iteration count as tests/test_engine.py (200 frames of 64x64, spiral)
FRAMES = 200
ITERATIONS = 40
TARGET_NRMSE = 0.10

#: packages the engine, the CLI parser and ``bench`` must not pull in
HEAVY = ("bluesky", "event_model", "tiled", "ophyd", "ophyd_async", "databroker", "cupy")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "sim.cxi"
    assert cli.main(["simulate", str(path), "--frames", str(FRAMES), "--frame-size", "64"]) == 0
    return path


def test_simulate_writes_cxi(simulated):
    frames, x, y, config = read_cxi(simulated)
    assert frames.shape == (FRAMES, 64, 64)
    assert config.frame_shape == (64, 64) and config.position_scale_m == 1.0


def test_reconstruct_reaches_target(simulated, tmp_path, capsys):
    output = tmp_path / "recon.h5"
    argv = ["reconstruct", str(simulated), "--iterations", str(ITERATIONS)]
    argv += ["--output", str(output), "--backend", "numpy", "--chunk-frames", "64"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "NRMSE vs true object" in printed
    with h5py.File(output, "r") as f:
        assert {"object", "probe", "coverage", "origin_m", "pixel_m", "history"} <= set(f)
        obj = f["object"][()]
        assert obj.dtype == np.complex64 and np.isfinite(obj).all()
        assert f["probe"].shape == (64, 64)
        assert f["coverage"].shape == obj.shape
        assert f["origin_m"].shape == f["pixel_m"].shape == (2,)
        history = f["history"]
        assert set(history) >= {"iteration", "poisson_nll", "step", "seconds", "n_frames"}
        assert history["poisson_nll"].shape == (ITERATIONS,)
        np.testing.assert_array_equal(history["iteration"][()], np.arange(1, ITERATIONS + 1))
        assert history["poisson_nll"][-1] < history["poisson_nll"][0]
        models = history["noise_model"][()]
        assert models.shape == (ITERATIONS,) and models[0] == b"amplitude"
        assert set(models) <= {b"amplitude", b"poisson"}
        assert f.attrs["iterations"] == ITERATIONS and f.attrs["n_frames"] == FRAMES
        assert f.attrs["energy_kev"] == pytest.approx(9.0)
        assert f.attrs["dp_orient"] == "identity"
        assert tuple(f.attrs["frame_shape"]) == (64, 64)
        nrmse = float(f.attrs["nrmse"])
    assert nrmse <= TARGET_NRMSE, f"NRMSE {nrmse:.4f} after {ITERATIONS} iterations"
    assert f"{nrmse:.4f}" in printed
    assert not list(tmp_path.glob(".*.partial"))


def test_reconstruct_options_reach_the_engine(tmp_path, capsys):
    scan = tmp_path / "turned.cxi"
    argv = ["simulate", str(scan), "--frames", "24", "--frame-size", "16", "--scan", "raster"]
    assert cli.main([*argv, "--dp-orient", "rot90_cw", "--photons", "1e4", "--seed", "3"]) == 0
    assert "--dp-orient rot90_cw" in capsys.readouterr().out
    first = tmp_path / "first.h5"
    argv = ["reconstruct", str(scan), "--iterations", "3", "--output", str(first), "--quiet"]
    argv += ["--dp-orient", "rot90_cw", "--x-direction", "-1", "--precision", "double"]
    assert cli.main([*argv, "--backend", "numpy"]) == 0
    with h5py.File(first, "r") as f:
        assert f["object"].dtype == np.complex128
        assert f.attrs["dp_orient"] == "rot90_cw"
        assert (f.attrs["x_direction"], f.attrs["y_direction"]) == (-1, 1)
        assert f.attrs["dtype"] == "complex128"
    # warm start from the probe of the first run, propagated; default output name
    argv = ["reconstruct", str(scan), "--iterations", "2", "--probe", str(first), "--quiet"]
    assert cli.main([*argv, "--probe-propagation-m", "1e-6", "--backend", "numpy"]) == 0
    with h5py.File(tmp_path / "turned.recon.h5", "r") as f:
        assert f.attrs["probe_path"] == str(first)
        assert f.attrs["probe_propagation_m"] == 1e-6
        assert f["history/poisson_nll"].shape == (2,)


def test_errors_are_reported_not_raised(tmp_path, capsys):
    status = cli.main(["reconstruct", str(tmp_path / "missing.cxi"), "--iterations", "1"])
    assert status == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["reconstruct", "x.cxi", "--x-direction", "2"])
    assert info.value.code == 2
    assert "expected +1 or -1" in capsys.readouterr().err


@pytest.mark.parametrize("command", [*cli.COMMANDS, None])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        # command names are module names with "-" for "_" (detect_orientation -> detect-orientation)
        cli.main([command.replace("_", "-"), "--help"] if command else ["--help"])
    assert info.value.code == 0
    assert "usage: bluesky-ptycho" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert bluesky_ptycho.__version__ in capsys.readouterr().out


def test_imports_stay_light(tmp_path):
    """Engine, CLI parser and every command module import neither Bluesky nor CuPy."""
    code = (
        "import sys\n"
        "import bluesky_ptycho, bluesky_ptycho.cli\n"
        "bluesky_ptycho.cli.build_parser()\n"
        f"heavy = set({HEAVY!r})\n"
        "loaded = sorted(heavy & {name.split('.')[0] for name in sys.modules})\n"
        "print('LOADED', loaded)\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout, result.stdout


def test_console_script_installed():
    script = Path(sys.executable).parent / "bluesky-ptycho"
    if not script.exists():
        pytest.skip("bluesky-ptycho is not installed in this environment (pip install -e .)")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert bluesky_ptycho.__version__ in result.stdout
