"""Read and write ptychography scans as CXI (HDF5) files.

Layout written by :func:`write_cxi` (CXI 1.5 names; units in SI):

========================================================  =============================
``/cxi_version``                                          150
``/entry_1/instrument_1/detector_1/data``                 (n, M, N) photon counts,
                                                          DC in the centre, as recorded
``/entry_1/data_1/data``                                  soft link to the above
``/entry_1/sample_1/geometry_1/translation``              (n, 3) float64, metres:
                                                          (x, y, 0) translation of the
                                                          sample (CXI): the probe
                                                          position on the object is
                                                          minus it; attribute
                                                          ``positions`` names the
                                                          convention written
``/entry_1/data_1/translation``                           soft link to the above
``/entry_1/instrument_1/source_1/energy``                 photon energy, joules
``/entry_1/instrument_1/detector_1/distance``             sample-detector distance, m
``/entry_1/instrument_1/detector_1/x_pixel_size``         detector pixel pitch, m
``/entry_1/instrument_1/detector_1/y_pixel_size``         detector pixel pitch, m
``/entry_1/instrument_1/detector_1/mask``                 optional (M, N) uint32, CXI
                                                          convention: 0 = good pixel,
                                                          bit 0 set = invalid pixel
``/entry_1/sample_1/simulation/object``                   optional, non-standard: the
                                                          true object of a simulation
``/entry_1/sample_1/simulation/origin_m``                 (y, x) metres of its pixel
                                                          [0, 0]
========================================================  =============================

Position conventions (``positions=``, see docs/real-data.md): the CXI
specification defines ``translation`` as the translation of the *sample*
(``"sample-translation"``, the default: probe position = -translation; CDTools
reads and writes it so); PyNX, ptychodus and some ptypy loaders store the
*probe position* there (``"probe-position"``). Negating both axes is exactly
the twin ambiguity: invisible from a cold start, fatal with a warm-start probe.
:func:`read_cxi` uses, in order, the ``positions`` argument, the dataset's
``positions`` attribute (written by :func:`write_cxi`), the specification.

Positions in the file are metres, so :func:`read_cxi` builds a
:class:`~bluesky_ptycho.config.ReconConfig` with ``position_scale_m=1.0``: the
returned ``x`` and ``y`` are "motor readings" in metres. The detector
orientation (``dp_orient``) and the axis signs (``x_direction``,
``y_direction``) are not part of CXI; pass them as overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .config import POSITION_CONVENTIONS, ReconConfig

CXI_VERSION = 150
#: joules per keV
JOULE_PER_KEV = 1.602176634e-16

DATA = "/entry_1/data_1/data"
DETECTOR = "/entry_1/instrument_1/detector_1"
DETECTOR_DATA = f"{DETECTOR}/data"
TRANSLATION = "/entry_1/sample_1/geometry_1/translation"
DATA_TRANSLATION = "/entry_1/data_1/translation"
ENERGY = "/entry_1/instrument_1/source_1/energy"
DISTANCE = f"{DETECTOR}/distance"
X_PIXEL = f"{DETECTOR}/x_pixel_size"
Y_PIXEL = f"{DETECTOR}/y_pixel_size"
MASK = f"{DETECTOR}/mask"
SIMULATION = "/entry_1/sample_1/simulation"
TRUTH_OBJECT = f"{SIMULATION}/object"
TRUTH_ORIGIN = f"{SIMULATION}/origin_m"

#: attribute of the translation dataset naming its convention
POSITIONS_ATTR = "positions"

#: ReconConfig fields that read_cxi sets from the file layout and refuses to override
_FIXED_BY_FILE = ("position_scale_m", "frame_shape")


def write_cxi(
    path: str | Path,
    frames: Any,
    positions_m: Any,
    config: ReconConfig,
    truth_object: np.ndarray | None = None,
    *,
    truth_origin_m: tuple[float, float] | None = None,
    positions: str = "sample-translation",
) -> Path:
    """Write a scan to ``path`` as CXI and return the path.

    Parameters
    ----------
    frames : (n, M, N) photon counts as recorded (DC centred, detector orientation).
    positions_m : (n, 2) probe positions on the object, (x, y) order, metres.
    config : energy, distance, detector pixel and optional mask come from here;
        ``dp_orient``, directions and ``position_scale_m`` are not stored.
    truth_object : (H, W) complex, the true object of a simulation (optional).
    truth_origin_m : (y, x) metres of ``truth_object[0, 0]``; default: the object
        centred on position (0, 0), as :mod:`bluesky_ptycho.sim.sample` makes it.
    positions : what ``translation`` holds, "sample-translation" (CXI, default:
        minus the probe positions) or "probe-position"; recorded as an attribute.
    """
    import h5py

    path = Path(path)
    frames = np.asarray(frames)
    probe_xy = np.asarray(positions_m, dtype=np.float64)
    if frames.ndim != 3 or tuple(frames.shape[1:]) != config.frame_shape:
        raise ValueError(
            f"write_cxi: frames must have shape (n, {config.frame_shape[0]}, "
            f"{config.frame_shape[1]}) (config.frame_shape), got {frames.shape}"
        )
    if probe_xy.shape != (frames.shape[0], 2):
        raise ValueError(
            f"write_cxi: positions_m must have shape ({frames.shape[0]}, 2) in (x, y) order, "
            f"got {probe_xy.shape}"
        )
    sign = _translation_sign(positions, "write_cxi")
    translation = np.zeros((frames.shape[0], 3))
    translation[:, :2] = sign * probe_xy
    with h5py.File(path, "w") as f:
        f.create_dataset("cxi_version", data=CXI_VERSION)
        detector = f.create_group(DETECTOR)
        detector.create_dataset(
            "data", data=frames, chunks=(1, *frames.shape[1:]) if frames.shape[0] else None
        )
        detector["data"].attrs["units"] = "counts"
        for name, value in (
            ("distance", config.distance_m),
            ("x_pixel_size", config.detector_pixel_m),
            ("y_pixel_size", config.detector_pixel_m),
        ):
            detector.create_dataset(name, data=float(value))
            detector[name].attrs["units"] = "m"
        if config.mask is not None:
            invalid = (np.asarray(config.mask) == 0).astype(np.uint32)
            detector.create_dataset("mask", data=invalid)
            detector["mask"].attrs["convention"] = "CXI: 0 = good pixel, bit 0 = invalid"
        f.create_dataset(ENERGY, data=config.energy_kev * JOULE_PER_KEV)
        f[ENERGY].attrs["units"] = "J"
        f.create_dataset(TRANSLATION, data=translation)
        f[TRANSLATION].attrs["units"] = "m"
        f[TRANSLATION].attrs[POSITIONS_ATTR] = positions
        data_group = f.require_group("/entry_1/data_1")
        data_group["data"] = h5py.SoftLink(DETECTOR_DATA)
        data_group["translation"] = h5py.SoftLink(TRANSLATION)
        if truth_object is not None:
            truth = np.asarray(truth_object)
            if truth_origin_m is None:
                pixel = config.object_pixel_m
                truth_origin_m = (
                    -(truth.shape[0] // 2) * pixel[0],
                    -(truth.shape[1] // 2) * pixel[1],
                )
            simulation = f.create_group(SIMULATION)
            simulation.create_dataset("object", data=truth)
            simulation.create_dataset("origin_m", data=np.asarray(truth_origin_m, np.float64))
            simulation["origin_m"].attrs["units"] = "m"
            simulation["origin_m"].attrs["axes"] = "(y, x)"
    return path


def _translation_sign(positions: str, where: str) -> float:
    """+1 when ``translation`` holds probe positions, -1 when it holds sample translations."""
    if positions not in POSITION_CONVENTIONS:
        raise ValueError(
            f"{where}: positions must be one of {', '.join(POSITION_CONVENTIONS)} (what the "
            f"file's translation holds), got {positions!r}"
        )
    return 1.0 if positions == "probe-position" else -1.0


def _require(handle: Any, name: str, path: Path, what: str) -> Any:
    if name not in handle:
        raise ValueError(f"{path}: CXI field {name} ({what}) is missing")
    return handle[name]


def _scalar(handle: Any, name: str, path: Path, what: str) -> float:
    value = np.asarray(_require(handle, name, path, what)[()], dtype=np.float64)
    if value.size != 1 or not np.isfinite(value).all():
        raise ValueError(
            f"{path}: CXI field {name} ({what}) must be one finite number, got {value}"
        )
    return float(value.reshape(-1)[0])


def positions_convention(path: str | Path, positions: str | None = None) -> str:
    """The convention :func:`read_cxi` uses for ``path`` (see module docstring)."""
    import h5py

    if positions is not None:
        _translation_sign(positions, "read_cxi")
        return positions
    if not Path(path).exists():
        raise ValueError(f"read_cxi: file {path} does not exist")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"read_cxi: {path} is not a readable HDF5/CXI file ({error})") from error
    with handle:
        for name in (TRANSLATION, DATA_TRANSLATION):
            if name in handle and POSITIONS_ATTR in handle[name].attrs:
                stored = handle[name].attrs[POSITIONS_ATTR]
                stored = stored.decode() if isinstance(stored, bytes) else str(stored)
                _translation_sign(stored, f"{path}: attribute {name}@{POSITIONS_ATTR}")
                return stored
    return "sample-translation"


def read_cxi(
    path: str | Path,
    *,
    lazy: bool = False,
    positions: str | None = None,
    **config_overrides: Any,
) -> tuple[Any, np.ndarray, np.ndarray, ReconConfig]:
    """Frames, probe positions and configuration of a CXI scan.

    Parameters
    ----------
    path : CXI file.
    lazy : return the frames as an open ``h5py.Dataset`` (read it in chunks; close
        it with ``frames.file.close()``) instead of a NumPy array read at once.
    positions : what the file's ``translation`` holds: "sample-translation" (the
        CXI specification; probe position = -translation) or "probe-position"
        (PyNX, ptychodus); None: the file's ``positions`` attribute, else the
        specification (:func:`positions_convention`).
    config_overrides : :class:`ReconConfig` fields, e.g. ``dp_orient``,
        ``x_direction``, ``y_direction``, ``probe_path``, ``dtype``; they replace
        values from the file. ``position_scale_m`` and ``frame_shape`` are fixed
        by the file and cannot be overridden.

    Returns
    -------
    frames : (n, M, N) counts as recorded (h5py dataset when ``lazy``, else ndarray).
    x, y : (n,) float64 probe positions on the object in metres (config has
        ``position_scale_m=1``).
    config : the reconstruction configuration.
    """
    import h5py

    path = Path(path)
    unknown = sorted(set(config_overrides) - set(ReconConfig.field_names()))
    if unknown:
        raise ValueError(
            f"read_cxi: unknown ReconConfig field(s) {', '.join(unknown)}; "
            f"valid names: {', '.join(ReconConfig.field_names())}"
        )
    fixed = sorted(set(config_overrides) & set(_FIXED_BY_FILE))
    if fixed:
        raise ValueError(f"read_cxi: {', '.join(fixed)} are set by the CXI file, not overrides")
    sign = _translation_sign(positions_convention(path, positions), "read_cxi")
    if not path.exists():
        raise ValueError(f"read_cxi: file {path} does not exist")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"read_cxi: {path} is not a readable HDF5/CXI file ({error})") from error
    try:
        if DATA in handle:
            frames = handle[DATA]
        elif DETECTOR_DATA in handle:
            frames = handle[DETECTOR_DATA]
        else:
            raise ValueError(f"{path}: CXI field {DATA} ((n, M, N) diffraction frames) is missing")
        if frames.ndim != 3:
            raise ValueError(f"{path}: {frames.name} must be (n, M, N) frames, got {frames.shape}")
        n = frames.shape[0]
        name = (
            DATA_TRANSLATION
            if TRANSLATION not in handle and DATA_TRANSLATION in handle
            else TRANSLATION
        )
        translation = np.asarray(
            _require(handle, name, path, "(n, 3) positions in m")[()], np.float64
        )
        if translation.ndim == 2 and translation.shape[0] != n and translation.shape[1] == n:
            translation = translation.T  # (3, n), as PyNX writes it
        if translation.ndim != 2 or translation.shape[0] != n or translation.shape[1] not in (2, 3):
            raise ValueError(
                f"{path}: {name} must be ({n}, 3) (or (3, {n})) positions in metres, one per "
                f"frame, got {translation.shape}"
            )
        energy_j = _scalar(handle, ENERGY, path, "photon energy in J")
        distance_m = _scalar(handle, DISTANCE, path, "sample-detector distance in m")
        x_pixel_m = _scalar(handle, X_PIXEL, path, "detector pixel width in m")
        y_pixel_m = _scalar(handle, Y_PIXEL, path, "detector pixel height in m")
        if not np.isclose(x_pixel_m, y_pixel_m, rtol=1e-9, atol=0):
            raise ValueError(
                f"{path}: non-square detector pixels ({x_pixel_m} m x {y_pixel_m} m) "
                "are not supported"
            )
        settings: dict[str, Any] = {
            "energy_kev": energy_j / JOULE_PER_KEV,
            "distance_m": distance_m,
            "detector_pixel_m": x_pixel_m,
            "frame_shape": (int(frames.shape[1]), int(frames.shape[2])),
            "position_scale_m": 1.0,
        }
        if MASK in handle:
            settings["mask"] = (np.asarray(handle[MASK][()]) == 0).astype(np.uint8)
        settings.update(config_overrides)
        config = ReconConfig(**settings)
        x = np.ascontiguousarray(sign * translation[:, 0])
        y = np.ascontiguousarray(sign * translation[:, 1])
        if not lazy:
            frames = frames[()]
            handle.close()
        return frames, x, y, config
    except BaseException:
        handle.close()
        raise


def read_cxi_truth(path: str | Path) -> tuple[np.ndarray, tuple[float, float]] | None:
    """``(object, origin_m)`` of a simulated scan's true object, or None when absent."""
    import h5py

    with h5py.File(path, "r") as handle:
        if TRUTH_OBJECT not in handle:
            return None
        truth = np.asarray(handle[TRUTH_OBJECT][()])
        origin = np.asarray(
            _require(handle, TRUTH_ORIGIN, Path(path), "(y, x) of the true object in m")[()],
            np.float64,
        )
    return truth, (float(origin[0]), float(origin[1]))
