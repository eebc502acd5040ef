"""Helpers of the serve tests (not a test module): real processes on 127.0.0.1.

Every process is started here and stopped by its PID (SIGTERM or SIGINT, then
SIGKILL after a grace period); its output goes to a log file shown on failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from ptycho_support import Recorder, events_of
from subprocess_support import PACKAGE_ROOT

from bluesky_ptycho.metrics import COVERED_RELATIVE, crop_truth, object_nrmse

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process with its log; :meth:`stop` signals it by PID."""

    def __init__(
        self,
        args: list[str],
        log: Path,
        stop_signal: int = signal.SIGTERM,
        env_extra: dict[str, str] | None = None,
    ) -> None:
        env = {**os.environ, **(env_extra or {})}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        self.log = log
        self._stream = log.open("wb")
        self.stop_signal = stop_signal
        self.popen = subprocess.Popen(args, stdout=self._stream, stderr=subprocess.STDOUT, env=env)
        self.pid = self.popen.pid

    def stop(self, timeout_s: float = 60.0) -> int:
        """Signal by PID, wait, kill if it does not end; returns the exit status."""
        if self.popen.poll() is None:
            os.kill(self.pid, self.stop_signal)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._stream.close()
        return self.popen.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def serve_process(
    args: list[str], folder: Path, name: str = "serve", env_extra: dict[str, str] | None = None
) -> tuple[Process, Path]:
    """``bluesky-ptycho serve ARGS`` with a status file; returns (process, status file)."""
    status = folder / f"{name}-status.json"
    command = [sys.executable, "-m", "bluesky_ptycho.cli", "serve", *args]
    command += ["--status-file", str(status), "--health-interval", "0.5"]
    return Process(command, folder / f"{name}.log", env_extra=env_extra), status


def read_status(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, log: Any = None) -> Any:
    """Poll ``condition`` until true; fail at once if the process ``log`` has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if log is not None and log.popen.poll() is not None:
            raise AssertionError(f"{what}: the process exited\n{log.text()[-4000:]}")
        time.sleep(0.1)
    detail = f"\n--- log ---\n{log.text()[-4000:]}" if log is not None else ""
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{detail}")


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


CALLBACK_TOML = """
[callback]
backend = "numpy"
refine_iterations = 30
snapshot_interval_s = 0.5
"""


class DerivedListener:
    """Collect derived documents in a thread (a source of the server package)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.recorder = Recorder()
        self._thread = threading.Thread(target=source.run, args=(self.recorder,), daemon=True)
        self._thread.start()

    def stops(self) -> list[dict]:
        return [d for n, d in self.recorder.docs if n == "stop"]

    def close(self) -> None:
        self.source.interrupt()
        self._thread.join(30)


#: the primary-stream keys that an NRMSE needs
RESULT_KEYS = ("object_amplitude", "object_phase", "coverage", "origin_m", "pixel_m")


def result_nrmse(data: Any, beamline: Any) -> float:
    """NRMSE of a derived result (primary event data) as delivered, against the sample."""
    obj = np.asarray(data["object_amplitude"]) * np.exp(1j * np.asarray(data["object_phase"]))
    truth = crop_truth(
        beamline.sample.object,
        beamline.sample.origin_m,
        obj.shape,
        tuple(data["origin_m"]),
        tuple(data["pixel_m"]),
    )
    region = (np.asarray(data["coverage"]) >= COVERED_RELATIVE) & np.isfinite(truth)
    return object_nrmse(obj, np.nan_to_num(truth), region)


def derived_nrmse(docs: list[tuple[str, dict]], beamline: Any) -> float:
    """:func:`result_nrmse` of a derived run's documents."""
    (result,) = events_of(docs, "primary")
    return result_nrmse(result["data"], beamline)
