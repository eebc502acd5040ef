"""Run Python in a subprocess against this checkout (shared by the CLI tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bluesky_ptycho

#: folder that holds the bluesky_ptycho package being tested
PACKAGE_ROOT = str(Path(bluesky_ptycho.__file__).resolve().parent.parent)


def run_python(code: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -c code`` with this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )
