"""The plugin's import footprint: what ``import bluesky_ptycho.callback`` costs a profile."""

from __future__ import annotations

import pytest
from subprocess_support import run_python

#: the demo's packages (extra ``demo``) and the GPU's: none may be pulled by the callback
NOT_PULLED = ("cupy", "matplotlib", "ophyd", "ophyd_async", "tiled.server", "databroker")


def test_import_callback_pulls_no_demo_or_gpu_package(tmp_path):
    code = (
        "import sys\n"
        "import bluesky_ptycho.callback\n"
        "import bluesky_ptycho.outputs\n"
        f"names = {NOT_PULLED!r}\n"
        "loaded = sorted(n for n in names if n in sys.modules)\n"
        "print('LOADED', loaded)\n"
        "sys.exit(bool(loaded))\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOADED []" in result.stdout


def test_runtime_dependencies_are_the_plugins_imports():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    runtime = {dep.split(">")[0].split("[")[0].split("=")[0] for dep in project["dependencies"]}
    assert runtime == {"numpy", "h5py", "tqdm", "event-model"}
    assert "bluesky-ptycho[demo]" in project["optional-dependencies"]["test"]
