"""Reconstruction results as HDF5 files (the layout of docs/cli.md, "Output file").

Written by ``bluesky-ptycho reconstruct``; read back by ``bluesky-ptycho frc`` and
as a warm-start probe (``probe`` dataset).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import __version__


def write_result(path: str | Path, snapshot: Any, config: Any, attrs: dict[str, Any]) -> Path:
    """Write a snapshot as HDF5 (layout in docs/cli.md), atomically via a temporary file.

    Datasets: ``object`` (H, W) complex, ``probe`` (M, N) complex, ``coverage``
    (H, W) float32, ``origin_m`` and ``pixel_m`` (y, x) metres, ``history/*``
    (per iteration: iteration, poisson_nll, step, n_frames, seconds). Root
    attributes: every scalar ReconConfig field, ``n_frames``, ``bluesky_ptycho_version``
    and ``attrs``.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    history = snapshot.metrics.get("history", [])
    try:
        with h5py.File(temporary, "w") as f:
            f.create_dataset("object", data=snapshot.object)
            f.create_dataset("probe", data=snapshot.probe)
            f.create_dataset("coverage", data=snapshot.coverage)
            for name in ("origin_m", "pixel_m"):
                f.create_dataset(name, data=np.asarray(getattr(snapshot, name), np.float64))
                f[name].attrs["units"] = "m"
                f[name].attrs["axes"] = "(y, x)"
            group = f.create_group("history")
            for key, dtype in (
                ("iteration", np.int64),
                ("poisson_nll", np.float64),
                ("step", np.float64),
                ("n_frames", np.int64),
                ("seconds", np.float64),
            ):
                group.create_dataset(key, data=np.asarray([h.get(key) for h in history], dtype))
            group["seconds"].attrs["units"] = "s"
            models = [str(h.get("noise_model", "")) for h in history]
            group.create_dataset("noise_model", data=np.asarray(models, dtype="S"))
            for name in type(config).field_names():
                value = getattr(config, name)
                if value is None or name in ("probe", "mask"):
                    continue
                f.attrs[name] = np.asarray(value) if isinstance(value, tuple) else value
            f.attrs["has_mask"] = config.mask is not None
            f.attrs["n_frames"] = snapshot.n_frames
            f.attrs["bluesky_ptycho_version"] = __version__
            for key, value in attrs.items():
                f.attrs[key] = value
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)
    return path


def read_result(path: str | Path) -> dict[str, np.ndarray]:
    """The datasets of a result file (``object``, ``probe``, ``coverage``, ``origin_m``...)."""
    try:
        with h5py.File(path, "r") as handle:
            missing = [n for n in ("object", "coverage", "origin_m", "pixel_m") if n not in handle]
            if missing:
                raise ValueError(
                    f"{path}: not a `bluesky-ptycho reconstruct` result (no {', '.join(missing)})"
                )
            return {name: np.asarray(handle[name][()]) for name in handle if name != "history"}
    except OSError as error:
        raise ValueError(f"{path}: not a readable HDF5 file ({error})") from error
