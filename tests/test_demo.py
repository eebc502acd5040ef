"""``bluesky-ptycho demo``: the main-job command, end to end with an embedded Tiled server."""

from __future__ import annotations

import re
import time

from bluesky_ptycho import cli
from bluesky_ptycho.tools.demo import DemoOptions, run_demo

#: the issue's bound for the default demo on 2 CPU cores
DEFAULT_DEMO_S = 120.0


def test_default_demo_command(tmp_path, capsys):
    started = time.perf_counter()
    status = cli.main(["demo", "--output", str(tmp_path / "out"), "--quiet"])
    elapsed = time.perf_counter() - started
    out = capsys.readouterr().out
    assert status == 0, out
    assert elapsed < DEFAULT_DEMO_S, out
    assert re.search(r"Tiled server .*: http://127\.0\.0\.1:\d+/api/v1\s", out)
    assert "api_key" not in out  # the address is shown without its key (docs/security.md)
    nrmse = float(re.search(r"NRMSE against the known object: ([0-9.]+)", out).group(1))
    assert nrmse <= 0.10
    assert (tmp_path / "out" / "demo.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "tiled" / "catalog.db").exists()


def test_fly_scan_demo_stores_raw_frames_and_the_result_in_tiled(tmp_path):
    result = run_demo(
        DemoOptions(
            output=tmp_path,
            points=60,
            frame_size=32,
            fly=True,
            exposure_s=0.0,
            refine_iterations=5,
            backend="numpy",
            progress=False,
        )
    )
    assert result.exit_status == "success" and result.frames == 60
    assert result.tiled_arrays["raw xdet"] == (60, 1, 32, 32)
    assert result.tiled_arrays["probe_amplitude"] == (1, 32, 32)
    assert result.png.exists()
