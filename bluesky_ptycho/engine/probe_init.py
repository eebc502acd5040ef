"""Initial probe: cold start from the data, or warm start from an array or file.

Every initial probe is scaled so that ``sum |P|^2`` equals the mean photon
count per frame (the object starts as 1 and the FFT is unitary), then
propagated by ``probe_propagation_m`` when that is non-zero.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

#: datasets searched, in order, for a probe in an HDF5/CXI file
PROBE_DATASETS = (
    "probe",
    "/entry_1/probe",
    "/entry_1/instrument_1/source_1/probe",
    "/entry_1/instrument_1/source_1/illumination",
)


def cold_start_probe(xp: ModuleType, counts: Any, dtype: str) -> Any:
    """``fftshift(ifft2(sqrt(mean counts)))``, counts (n, M, N) with DC at the corner.

    Excluded pixels (negative counts) are left out of the mean.
    """
    valid = counts >= 0
    n_valid = valid.sum(axis=0)
    mean = xp.where(valid, counts, 0).sum(axis=0) / xp.maximum(n_valid, 1)
    amplitude = xp.sqrt(mean).astype(dtype)
    return xp.fft.fftshift(xp.fft.ifft2(amplitude, norm="ortho")).astype(dtype)


def load_probe(path: str | Path) -> np.ndarray:
    """A complex (M, N) probe from ``.npy`` or HDF5/CXI (first mode of a stack).

    HDF5 paths may name the dataset as ``file.h5:/group/dataset``.
    """
    text = str(path)
    dataset = None
    if ":" in text and not Path(text).exists():
        text, dataset = text.rsplit(":", 1)
    file_path = Path(text)
    if not file_path.exists():
        raise ValueError(f"probe_path: file {file_path} does not exist")
    if file_path.suffix == ".npy":
        probe = np.load(file_path)
    else:
        import h5py

        with h5py.File(file_path, "r") as handle:
            names = [dataset] if dataset else [n for n in PROBE_DATASETS if n in handle]
            if not names or names[0] not in handle:
                raise ValueError(
                    f"probe_path: no probe dataset in {file_path}; name it as "
                    f"'{file_path}:/path/to/dataset' (searched {', '.join(PROBE_DATASETS)})"
                )
            probe = handle[names[0]][()]
    return first_mode(np.asarray(probe), str(path))


def first_mode(probe: np.ndarray, where: str = "probe") -> np.ndarray:
    """The first (M, N) mode of a probe with any number of leading mode axes."""
    while probe.ndim > 2:
        probe = probe[0]
    if probe.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D complex probe, got shape {probe.shape}")
    return probe


def scale_to_photons(xp: ModuleType, probe: Any, photons_per_frame: float) -> Any:
    """``probe`` scaled so that ``sum |P|^2 == photons_per_frame``."""
    power = float((xp.abs(probe) ** 2).sum())
    if not power > 0:
        raise ValueError("probe: the initial probe is all zeros")
    return probe * np.sqrt(photons_per_frame / power)
