"""Hand-made raw runs for the fault-injection tests (not a test module).

:func:`step_run` composes the documents of a step scan with inline images (or
with images by reference) through event-model, so that a test can break them
in any way a RunEngine never would; :func:`feed` sends them to a callback and
checks that not one raw document was changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from event_model import compose_run

Docs = list[tuple[str, dict]]

IMAGE = "det_image"


def step_run(
    beamline: Any,
    n: int,
    metadata: dict | None = None,
    frame: Callable[[int, np.ndarray], np.ndarray] | None = None,
    position: Callable[[int, float, float], tuple[float, float]] | None = None,
    data_keys: dict | None = None,
    exit_status: str = "success",
    **start: Any,
) -> Docs:
    """Documents of an ``n``-point step scan of ``beamline`` (32x32 inline frames).

    frame(i, image) / position(i, x, y) may replace point ``i``'s image / readings.
    """
    md = beamline.metadata(IMAGE) if metadata is None else metadata
    run = compose_run(metadata={"ptycho": md, "num_points": n, **start})
    shape = list(beamline.config.frame_shape)
    keys = data_keys or {
        IMAGE: {"source": "sim", "dtype": "array", "shape": shape, "dtype_numpy": "<u4"},
        "sx": {"source": "sim", "dtype": "number", "shape": []},
        "sy": {"source": "sim", "dtype": "number", "shape": []},
    }
    descriptor = run.compose_descriptor(data_keys=keys, name="primary")
    docs: Docs = [("start", run.start_doc), ("descriptor", descriptor.descriptor_doc)]
    xs, ys = beamline.positions_um(n)
    for i, (x_um, y_um) in enumerate(zip(xs, ys, strict=True)):
        x, y = float(x_um), float(y_um)
        image = beamline.frame_at(x, y)
        if frame is not None:
            image = frame(i, image)
        if position is not None:
            x, y = position(i, x, y)
        data = {IMAGE: image, "sx": x, "sy": y}
        data = {k: (0.0 if v is None else v) for k, v in data.items() if k in keys}
        event = descriptor.compose_event(
            data=data, timestamps=dict.fromkeys(data, 0.0), seq_num=i + 1
        )
        for key in [k for k in ("sx", "sy") if k in data and (x, y)[k == "sy"] is None]:
            del event["data"][key], event["timestamps"][key]  # a reading that never came
        docs.append(("event", event))
    docs.append(("stop", run.compose_stop(exit_status=exit_status)))
    return docs


def feed(callback: Any, docs: Iterable[tuple[str, dict]]) -> None:
    """Send ``docs`` to ``callback``; assert that none of them was modified."""
    docs = list(docs)
    before = copy.deepcopy(docs)
    for name, doc in docs:
        callback(name, doc)
    assert_same(before, docs)


def assert_same(a: Any, b: Any, where: str = "docs") -> None:
    """Deep equality of documents (arrays compared by value, dtype and shape)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), where
    else:
        assert a == b, where
