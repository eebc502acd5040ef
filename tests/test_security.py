"""Hostile input: files outside data_roots, non-file URIs, secrets in printed addresses.

Resource documents (NPY_SEQ) naming files the callback must not open, sent to
the real callback; the derived run ends with ``exit_status="fail"`` and a reason
that says what was refused and how to allow it; nothing is read.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from event_model import compose_run
from fault_support import IMAGE, feed
from ptycho_support import WAIT_S, Recorder, stop_of

from bluesky_ptycho.callback import CallbackOptions, PtychoCallback
from bluesky_ptycho.callback.paths import PathPolicy, RefusedPath
from bluesky_ptycho.sim.beamline import make_beamline
from bluesky_ptycho.tools.demo import public_address

N = 12


@pytest.fixture(scope="module")
def beamline():
    return make_beamline(32, max_points=50, seed=2)


@pytest.fixture
def run_callback():
    made: list[PtychoCallback] = []

    def make(**options):
        recorder = Recorder()
        callback = PtychoCallback(
            recorder, backend="numpy", refine_iterations=3, scan_duty_cycle=1.0, **options
        )
        made.append(callback)
        return callback, recorder

    yield make
    for callback in made:
        assert callback.close(timeout=WAIT_S)


def npy_run(beamline, root: str, resource_path: str, write_to: str | None = None):
    """A step scan whose images are NPY_SEQ files ``{root}/{resource_path}_{i}.npy``."""
    run = compose_run(metadata={"ptycho": beamline.metadata(IMAGE)})
    keys = {
        IMAGE: {"source": "sim", "dtype": "array", "shape": [32, 32], "external": "FILESTORE:"},
        "sx": {"source": "sim", "dtype": "number", "shape": []},
        "sy": {"source": "sim", "dtype": "number", "shape": []},
    }
    descriptor = run.compose_descriptor(data_keys=keys, name="primary")
    resource = run.compose_resource(
        spec="NPY_SEQ", root=root, resource_path=resource_path, resource_kwargs={}
    )
    docs = [
        ("start", run.start_doc),
        ("descriptor", descriptor.descriptor_doc),
        ("resource", resource.resource_doc),
    ]
    xs, ys = beamline.positions_um(N)
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if write_to is not None:
            np.save(f"{write_to}_{i}.npy", beamline.frame_at(float(x), float(y)))
        datum = resource.compose_datum(datum_kwargs={"index": i})
        docs.append(("datum", datum))
        data = {IMAGE: datum["datum_id"], "sx": float(x), "sy": float(y)}
        event = descriptor.compose_event(
            data=data, timestamps=dict.fromkeys(data, 0.0), seq_num=i + 1
        )
        docs.append(("event", event))
    docs.append(("stop", run.compose_stop()))
    return docs


def ended(callback, recorder, docs):
    assert callback.wait(timeout=WAIT_S)
    result = callback.last_result
    assert result.raw_uid == docs[0][1]["uid"]
    stop = stop_of(recorder.of(result.raw_uid))
    assert (stop["exit_status"], stop["reason"]) == (result.exit_status, result.reason)
    return result


def test_files_under_data_roots_are_read(beamline, run_callback, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "scan").mkdir()
    docs = npy_run(beamline, str(data), "scan/img", write_to=str(data / "scan" / "img"))
    callback, recorder = run_callback(data_roots=[str(data)])
    feed(callback, docs)
    result = ended(callback, recorder, docs)
    assert result.exit_status == "success", result.reason
    assert result.frames_ingested == N


@pytest.mark.parametrize(
    ("case", "where"),
    [
        ("outside", "outside data_roots"),
        ("dotdot", "outside data_roots"),
        ("symlink", "outside data_roots"),
        ("etc", "outside data_roots"),
    ],
)
def test_files_outside_data_roots_are_refused(beamline, run_callback, tmp_path, case, where):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir()
    elsewhere.mkdir()
    if case == "outside":
        docs = npy_run(beamline, str(elsewhere), "img", write_to=str(elsewhere / "img"))
    elif case == "dotdot":
        docs = npy_run(beamline, str(data), "../elsewhere/img", write_to=str(elsewhere / "img"))
    elif case == "symlink":
        os.symlink(elsewhere, data / "link")
        docs = npy_run(beamline, str(data), "link/img", write_to=str(elsewhere / "img"))
    else:
        docs = npy_run(beamline, "/etc", "passwd")
    callback, recorder = run_callback(data_roots=[str(data)])
    feed(callback, docs)
    result = ended(callback, recorder, docs)
    assert result.exit_status == "fail"
    assert result.reason.startswith("refused: Resource ")
    assert where in result.reason
    assert "PtychoCallback(data_roots=[...])" in result.reason  # how to fix
    assert result.frames_ingested == 0 and result.frames_failed == N


def test_without_data_roots_system_files_and_escapes_are_refused(
    beamline, run_callback, tmp_path, caplog
):
    callback, recorder = run_callback()
    docs = npy_run(beamline, "/etc", "passwd")
    feed(callback, docs)
    result = ended(callback, recorder, docs)
    assert result.exit_status == "fail"
    assert "is in the system directory '/etc'" in result.reason
    (tmp_path / "root").mkdir()
    docs = npy_run(beamline, str(tmp_path / "root"), "../img", write_to=str(tmp_path / "img"))
    feed(callback, docs)
    result = ended(callback, recorder, docs)
    assert result.exit_status == "fail"
    assert "outside its root" in result.reason
    with caplog.at_level(logging.WARNING, logger="bluesky_ptycho.callback.paths"):
        docs = npy_run(beamline, str(tmp_path), "img", write_to=str(tmp_path / "img"))
        feed(callback, docs)
        assert ended(callback, recorder, docs).exit_status == "success"
    assert any("data_roots is not set" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://example.org/data.h5", "has scheme 'http'"),
        ("file://otherhost/data/x.h5", "names host 'otherhost'"),
        ("file:///etc/shadow", "outside data_roots"),
        ("file:///data/../etc/passwd", "outside data_roots"),
    ],
)
def test_stream_resource_uris(uri, message):
    policy = PathPolicy(["/data"])
    with pytest.raises(RefusedPath, match=message):
        policy.uri_path(uri, "StreamResource s1")
    assert policy.uri_path("file://localhost/data/a%20b.h5", "s") == os.path.realpath(
        "/data/a b.h5"
    )


def test_root_map_is_applied_before_the_check(tmp_path):
    policy = PathPolicy([str(tmp_path)], root_map={"/beamline/data": str(tmp_path)})
    assert policy.uri_path("file:///beamline/data/x.h5", "s") == str(tmp_path / "x.h5")


@pytest.mark.parametrize("value", ["/data", ["data"], [1], "x"])
def test_data_roots_must_be_a_list_of_absolute_paths(value):
    with pytest.raises(ValueError, match="data_roots: expected a list of absolute directory"):
        CallbackOptions(data_roots=value)


def test_printed_server_addresses_carry_no_secrets():
    url = "http://user:pw@127.0.0.1:8000/api/v1?api_key=s3cr3t&x=1"
    assert public_address(url) == "http://127.0.0.1:8000/api/v1?x=1"
    assert public_address("http://127.0.0.1:8000?token=t") == "http://127.0.0.1:8000"
