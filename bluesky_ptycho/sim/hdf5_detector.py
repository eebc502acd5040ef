"""An ophyd-async detector that writes diffraction frames to SWMR HDF5 (StreamResource).

Each exposure writes one frame (``/entry/data/data``, uint32) and the positions
it was taken at (``/entry/positions/x`` and ``/y``, motor units), and the
detector emits StreamResource/StreamDatum documents for three data keys:
``{name}`` (image), ``{name}-x`` and ``{name}-y``. In a step scan (``trigger``)
the position comes from ``position()``, the motors' readback; in a fly scan
(:func:`fly_scan`) from a trajectory set beforehand, like an encoder capture.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ophyd_async.core import (
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTriggerLogic,
    PathProvider,
    StandardDetector,
    StreamResourceDataProvider,
    StreamResourceInfo,
    TriggerInfo,
    soft_signal_r_and_setter,
)

FrameFunction = Callable[[float, float], np.ndarray]

IMAGE_PATH = "/entry/data/data"
X_PATH = "/entry/positions/x"
Y_PATH = "/entry/positions/y"


class _Writer:
    """SWMR HDF5 file of frames and the positions they were taken at."""

    def __init__(self, path: Path, frame_shape: tuple[int, int]) -> None:
        import h5py

        self.file = h5py.File(path, "w", libver="latest")
        self.image = self.file.create_dataset(
            IMAGE_PATH,
            shape=(0, *frame_shape),
            dtype=np.uint32,
            maxshape=(None, *frame_shape),
            chunks=(1, *frame_shape),
        )
        self.x = self.file.create_dataset(
            X_PATH, shape=(0,), dtype=np.float64, maxshape=(None,), chunks=(1024,)
        )
        self.y = self.file.create_dataset(
            Y_PATH, shape=(0,), dtype=np.float64, maxshape=(None,), chunks=(1024,)
        )
        self.file.swmr_mode = True
        self.count = 0

    def write(self, frame: np.ndarray, x: float, y: float) -> None:
        for dataset, value in ((self.x, x), (self.y, y), (self.image, frame)):
            dataset.resize(self.count + 1, axis=0)
            dataset[self.count] = value
            dataset.flush()
        self.count += 1

    def close(self) -> None:
        self.file.close()


class _State:
    """What the three detector logics share."""

    def __init__(self) -> None:
        self.writer: _Writer | None = None
        self.n_exposures = 1
        self.period_s = 0.0
        self.default_exposure_s = 0.0
        self.trajectory: list[tuple[float, float]] = []
        self.written, self.set_written = soft_signal_r_and_setter(int)


class _Trigger(DetectorTriggerLogic):
    def __init__(self, state: _State) -> None:
        self.state = state

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        self.state.n_exposures = num
        self.state.period_s = (livetime or self.state.default_exposure_s) + deadtime

    async def default_trigger_info(self) -> TriggerInfo:
        return TriggerInfo()


class _Acquire(DetectorAcquireLogic):
    def __init__(
        self, state: _State, frame: FrameFunction, position: Callable[[], tuple[float, float]]
    ) -> None:
        self.state, self.frame, self.position = state, frame, position
        self.task: asyncio.Task | None = None

    async def _acquire(self) -> None:
        state = self.state
        for _ in range(state.n_exposures):
            if state.period_s:
                await asyncio.sleep(state.period_s)
            x, y = state.trajectory.pop(0) if state.trajectory else self.position()
            if state.writer is None:
                raise RuntimeError("detector not prepared: no file open")
            state.writer.write(self.frame(x, y), x, y)
            state.set_written(state.writer.count)
            await asyncio.sleep(0)

    async def start_acquiring(self) -> None:
        self.task = asyncio.create_task(self._acquire())

    async def wait_for_idle(self) -> None:
        if self.task is not None:
            await self.task

    async def ensure_stopped(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None


class _Data(DetectorDataLogic):
    def __init__(self, state: _State, provider: PathProvider, shape: tuple[int, int]) -> None:
        self.state, self.provider, self.shape = state, provider, shape

    async def prepare_unbounded(self, datakey_name: str) -> StreamResourceDataProvider:
        info = self.provider(datakey_name)
        self.state.writer = _Writer(Path(info.directory_path) / f"{info.filename}.h5", self.shape)
        self.state.set_written(0)
        scalar = {"shape": (), "chunk_shape": (1024,), "dtype_numpy": np.dtype(np.float64).str}
        resources = [
            StreamResourceInfo(
                data_key=datakey_name,
                shape=self.shape,
                chunk_shape=(1, *self.shape),
                dtype_numpy=np.dtype(np.uint32).str,
                parameters={"dataset": IMAGE_PATH},
            ),
            StreamResourceInfo(
                data_key=f"{datakey_name}-x", parameters={"dataset": X_PATH}, **scalar
            ),
            StreamResourceInfo(
                data_key=f"{datakey_name}-y", parameters={"dataset": Y_PATH}, **scalar
            ),
        ]
        return StreamResourceDataProvider(
            uri=f"{info.directory_uri}{info.filename}.h5",
            resources=resources,
            mimetype="application/x-hdf5",
            collections_written_signal=self.state.written,
        )

    async def stop(self) -> None:
        if self.state.writer is not None:
            self.state.writer.close()
            self.state.writer = None

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return [datakey_name]


class SimPtychoHDF5Detector(StandardDetector):
    """Diffraction frames and recorded positions to SWMR HDF5 (see module docstring).

    frame : ``frame(x, y)`` -> one recorded frame at these motor readings.
    position : ``position()`` -> current (x, y) motor readback (step scans).
    exposure_s : exposure time when a trigger does not set one (livetime 0).
    """

    def __init__(
        self,
        path_provider: PathProvider,
        frame: FrameFunction,
        position: Callable[[], tuple[float, float]],
        frame_shape: tuple[int, int],
        exposure_s: float = 0.0,
        name: str = "",
    ) -> None:
        self._state = _State()
        self._state.default_exposure_s = exposure_s
        self.add_detector_logics(
            _Trigger(self._state),
            _Acquire(self._state, frame, position),
            _Data(self._state, path_provider, (int(frame_shape[0]), int(frame_shape[1]))),
        )
        super().__init__(name=name)

    def set_trajectory(self, x: Sequence[float], y: Sequence[float]) -> None:
        """Positions of the next exposures (fly scan); once used up, ``position()`` is read."""
        self._state.trajectory = [(float(a), float(b)) for a, b in zip(x, y, strict=True)]


def fly_scan(
    detector: SimPtychoHDF5Detector,
    x: Sequence[float],
    y: Sequence[float],
    *,
    exposure_s: float = 0.0,
    md: dict[str, Any] | None = None,
) -> Generator[Any, Any, None]:
    """Fly the HDF5 detector along (x, y) motor positions: no events, only StreamDatum."""
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    detector.set_trajectory(x, y)

    @bpp.stage_decorator([detector])
    @bpp.run_decorator(md={"plan_name": "ptycho_fly_scan", **(md or {})})
    def inner() -> Generator[Any, Any, None]:
        info = TriggerInfo(number_of_events=len(x), livetime=exposure_s)
        yield from bps.prepare(detector, info, wait=True)
        yield from bps.declare_stream(detector, name="primary", collect=True)
        yield from bps.kickoff(detector, wait=True)
        yield from bps.collect_while_completing(
            flyers=[detector], dets=[detector], flush_period=0.1, stream_name="primary"
        )

    yield from inner()
