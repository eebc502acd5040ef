"""The plugin's import footprint: what ``import bluesky_ptycho.callback`` costs a profile."""

from __future__ import annotations

import json

import pytest
from subprocess_support import run_python

#: the demo's packages (extra ``demo``) and the GPU's: none may be pulled by the callback
NOT_PULLED = ("cupy", "matplotlib", "ophyd", "ophyd_async", "tiled.server", "databroker")


def test_import_callback_pulls_no_demo_or_gpu_package(tmp_path):
    code = "import json, sys, bluesky_ptycho.callback, bluesky_ptycho.outputs\n"
    code += "print(json.dumps(sorted(sys.modules)))"
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    modules = set(json.loads(result.stdout.splitlines()[-1]))
    assert "bluesky_ptycho.callback.router" in modules  # the check itself works
    assert not modules & set(NOT_PULLED), sorted(modules & set(NOT_PULLED))


def test_runtime_dependencies_are_the_plugins_imports():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    runtime = {dep.split(">")[0].split("[")[0].split("=")[0] for dep in project["dependencies"]}
    assert runtime == {"numpy", "h5py", "tqdm", "event-model"}
    # the README's `pip install -e '.[test]'` must bring the demo (and the server tests' stack)
    (self_reference,) = [
        dep for dep in project["optional-dependencies"]["test"] if dep.startswith("bluesky-ptycho[")
    ]
    assert "demo" in self_reference.split("[")[1].rstrip("]").split(",")
