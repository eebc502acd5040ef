"""``bluesky-ptycho bench``: tiny CPU run, JSON output, light imports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from subprocess_support import run_python

from bluesky_ptycho import Reconstructor, cli
from bluesky_ptycho.engine.backend import cupy_device_available
from bluesky_ptycho.sim.sample import default_config, simulate_scan
from bluesky_ptycho.tools import bench_engine as bench


def test_bench_cli_tiny_numpy(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--backend", "numpy", "--frame-size", "16", "--frames", "30"]
    argv += ["--iterations", "6", "--block", "3", "--json", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "frame-iterations/s:" in printed
    assert "elapsed_s" in printed and "nrmse" in printed
    results = json.loads(out.read_text())
    assert results["backend"] == "numpy"
    assert results["iterations"] == 6 and len(results["blocks"]) == 2
    assert results["frame_iterations_per_s"] > 0
    expected = 30 * 6 / results["iterate_s"]
    assert results["frame_iterations_per_s"] == pytest.approx(expected)
    assert all(np.isfinite(row["nrmse"]) for row in results["blocks"])
    assert results["command"].startswith("bluesky-ptycho bench --backend numpy --frame-size 16")


def test_bench_records_the_transforms_and_refuses_fused_ones_on_numpy(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--backend", "numpy", "--frame-size", "16", "--frames", "12"]
    assert cli.main([*argv, "--iterations", "2", "--block", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["transforms"] == "cufft" and "--transforms cufft" in results["command"]
    assert cli.main([*argv, "--transforms", "fused"]) != 0
    assert "needs the fused operators" in capsys.readouterr().err


def test_bench_seconds_limit(capsys):
    results = bench.benchmark(
        backend="numpy", frame_size=16, n_frames=20, iterations=None, seconds=1e-6, block=2
    )
    assert results["iterations"] == 2 and len(results["blocks"]) == 1
    assert "frame-iterations/s" in capsys.readouterr().out


def test_bench_path_imports_no_bluesky_or_cupy(tmp_path):
    code = (
        "import sys\n"
        "from bluesky_ptycho import cli\n"
        "status = cli.main(['bench', '--backend', 'numpy', '--frame-size', '16', '--frames', '12',"
        " '--iterations', '2', '--block', '2'])\n"
        "heavy = {'bluesky', 'event_model', 'tiled', 'ophyd', 'ophyd_async', 'databroker',"
        " 'bluesky_tiled_plugins', 'cupy'}\n"
        "loaded = sorted(heavy & {name.split('.')[0] for name in sys.modules})\n"
        "print('LOADED', loaded)\n"
        "sys.exit(status or bool(loaded))\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOADED []" in result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not cupy_device_available(), reason="needs CuPy and a CUDA device")
def test_bench_cupy_matches_numpy_twin():
    import cupy

    scan = simulate_scan(default_config(16), n_frames=9)
    x_motor, y_motor = scan.x_motor, scan.y_motor
    on_gpu = scan.sample.expected_intensities(x_motor, y_motor, cupy).get()
    on_cpu = scan.sample.expected_intensities(x_motor, y_motor, np)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=0, atol=1e-6 * on_cpu.max())
    results = bench.benchmark(backend="cupy", frame_size=32, n_frames=64, iterations=4, block=2)
    assert results["backend"] == "cupy" and results["frame_iterations_per_s"] > 0


def test_stage_profile_times_each_stage_and_restores_the_engine():
    scan = simulate_scan(default_config(16), n_frames=12)
    rec = Reconstructor(scan.config, backend="numpy")
    rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
    rec.iterate(3)
    fft2 = np.fft.fft2
    stages = bench.stage_profile(rec, 2)
    ops = rec._stores[0].ops
    assert rec.iteration == 5 and np.fft.fft2 is fft2 and not vars(ops).keys() & set(stages)
    top_level = (
        "farfields", "nll_and_chi", "add_object_gradient", "direction_farfields",
        "line_search_sums",
    )  # fmt: skip
    assert all(stages[name] > 0 for name in (*top_level, "fft"))
    assert "advance" not in stages  # the default storage recomputes far fields instead
    assert stages["iteration"] >= sum(stages[name] for name in top_level)
