"""The callback's own options (everything that is not a reconstruction setting).

:class:`CallbackOptions` is one frozen, validated object; ``PtychoCallback``
takes its fields as keywords (``PtychoCallback(emit, backend="cupy", ...)``) or
as a whole (``PtychoCallback(emit, options=CallbackOptions(...))``). Values
follow the rule of :mod:`bluesky_ptycho.validation` (no bool for a number, no
numeric strings, nothing clamped).

Throttle default (``scan_duty_cycle="auto"``): while a scan runs, the worker
iterates at most :data:`AUTO_DUTY_CYCLE` of the wall time when the engine runs
on NumPy on a host with at most :data:`AUTO_THROTTLE_MAX_CORES` usable CPU
cores; otherwise (a GPU, or enough cores) flat out. After the stop document
refinement always runs flat out.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import validation
from ..engine.backend import BACKENDS

POLICIES = ("finish", "preempt")

#: duty cycle of the "auto" throttle on a few-core CPU host (docs/usage.md has the measurement)
AUTO_DUTY_CYCLE = 0.25
#: hosts with at most this many usable cores get the throttle with a NumPy engine
AUTO_THROTTLE_MAX_CORES = 4


def usable_cores() -> int:
    """CPU cores this process may run on (affinity-aware on Linux)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _duty_cycle(name: str, value: Any) -> Any:
    if value == "auto" and isinstance(value, str):
        return value
    return validation.real("'auto' or a number in (0, 1]", lambda v: 0 < v <= 1)(name, value)


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        validation.fail(name, "a mapping (dict)", value)
    return dict(value)


def _directories(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        validation.fail(name, "a list of absolute directory paths (or None)", value)
    roots = tuple(value)
    for root in roots:
        if not isinstance(root, str) or not os.path.isabs(root):
            validation.fail(name, "a list of absolute directory paths (or None)", value)
    return roots


def _warm_up(name: str, value: Any) -> bool | str:
    if value == "auto" and isinstance(value, str):
        return value
    return validation.boolean()(name, value)


def _gpus(name: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        validation.fail(name, "a non-empty list of CUDA device numbers (or None)", value)
    devices = tuple(value)
    for device in devices:
        if isinstance(device, bool) or not isinstance(device, int) or device < 0:
            validation.fail(name, "a non-empty list of CUDA device numbers (or None)", value)
    return devices


_SECONDS = validation.real("seconds >= 0", lambda v: v >= 0)


@dataclass(frozen=True, kw_only=True)
class CallbackOptions:
    """Options of :class:`~bluesky_ptycho.callback.PtychoCallback` (not per scan).

    backend : engine array module: "numpy", "cupy" or "auto" (GPU when present).
    warm_up : compile the GPU kernels in the worker thread as soon as the callback
        is made, so the first scan's live reconstruction does not wait for them
        (about 15 s on a fresh host, less with CuPy's kernel cache); "auto": when
        the engine runs on CuPy (:mod:`~bluesky_ptycho.engine.warmup`).
    gpus : CUDA devices one reconstruction's frames are partitioned over (e.g.
        ``(0, 1)``; NCCL sums the gradients), or None: the current device only.
        Needs the CuPy backend (docs/deployment.md, "Several GPUs").
    new_run_policy : "finish" or "preempt": whether a new run waits for the
        previous one's refinement (see :mod:`~bluesky_ptycho.callback.worker`).
    snapshot_interval_s : seconds between live snapshots (progress events), >= 0.
    max_queued_frames : soft bound of the hand-off queue, frames (>= 1).
    full_wait_s : longest wait of the RunEngine thread when the bound is reached.
    handler_registry : extra Resource spec -> handler class (NPY_SEQ, AD_HDF5 built in).
    root_map : file path prefix replacements for Resource and StreamResource paths.
    file_timeout_s : after the stop document, how long unreadable files are retried.
    require_metadata : reconstruct only runs whose start document has ``ptycho``.
    worker_nice : niceness added to the worker thread (Linux), 0..19.
    scan_duty_cycle : fraction of wall time the worker may spend iterating while a
        scan runs, in (0, 1], or "auto" (see module docstring).
    idle_poll_s : longest wait for items while a run waits for files or frames.
    linger_s : once idle, how long to keep gathering items after the first arrives.
    tiled, tiled_path : Tiled live nodes (a URI, a Tiled client or a
        :class:`~bluesky_ptycho.outputs.tiled_nodes.TiledLiveNodes`) and the node
        path under which each run's container ``<tiled_path>/<raw_uid>`` goes
        (docs/outputs.md); ``tiled=None`` (default): no live nodes.
    data_roots : directories that Resource / StreamResource files must lie under
        (resolved, symlinks followed), or None: anywhere outside system
        directories, with a warning (see :mod:`~bluesky_ptycho.callback.paths`).
    memory_budget_bytes : largest engine memory a run may need, estimated from the
        declared frame shape and count before anything is allocated, or None: 90 %
        of the GPU's memory with the CuPy backend, else half the host's memory
        (see :mod:`~bluesky_ptycho.callback.memory`).
    """

    backend: str = "auto"
    gpus: tuple[int, ...] | None = None
    warm_up: bool | str = "auto"
    new_run_policy: str = "finish"
    snapshot_interval_s: float = 1.0
    max_queued_frames: int = 4096
    full_wait_s: float = 0.05
    handler_registry: Mapping[str, Any] = field(default_factory=dict)
    root_map: Mapping[str, str] = field(default_factory=dict)
    file_timeout_s: float = 30.0
    require_metadata: bool = False
    worker_nice: int = 10
    scan_duty_cycle: float | str = "auto"
    idle_poll_s: float = 0.05
    linger_s: float = 0.02
    tiled: Any = field(default=None, repr=False)
    tiled_path: str = "ptycho"
    data_roots: tuple[str, ...] | None = None
    memory_budget_bytes: int | None = None

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> CallbackOptions:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def duty_cycle(self, engine_backend: str) -> float:
        """The duty cycle while a scan runs, for an engine on ``engine_backend``."""
        if self.scan_duty_cycle != "auto":
            return float(self.scan_duty_cycle)
        few_cores = usable_cores() <= AUTO_THROTTLE_MAX_CORES
        return AUTO_DUTY_CYCLE if engine_backend == "numpy" and few_cores else 1.0


_CHECKS: dict[str, validation.Check] = {
    "backend": validation.choice(BACKENDS),
    "gpus": _gpus,
    "warm_up": _warm_up,
    "new_run_policy": validation.choice(POLICIES),
    "snapshot_interval_s": _SECONDS,
    "max_queued_frames": validation.integer("an integer >= 1", lambda v: v >= 1),
    "full_wait_s": _SECONDS,
    "handler_registry": _mapping,
    "root_map": _mapping,
    "file_timeout_s": _SECONDS,
    "require_metadata": validation.boolean(),
    "worker_nice": validation.integer("an integer in 0..19", lambda v: 0 <= v <= 19),
    "scan_duty_cycle": _duty_cycle,
    "idle_poll_s": validation.real("seconds > 0", lambda v: v > 0),
    "linger_s": _SECONDS,
    "tiled": validation.anything(),
    "tiled_path": validation.text("a Tiled container path"),
    "data_roots": _directories,
    "memory_budget_bytes": validation.optional(
        validation.integer("an integer number of bytes >= 1", lambda v: v >= 1)
    ),
}
