"""The serve building blocks without processes: codec, run keys, config file, options."""

from __future__ import annotations

import pickle
import textwrap
import time

import bluesky.plans as bp
import bluesky_kafka  # noqa: F401 - patches msgpack with msgpack-numpy's pickling hook
import msgpack_numpy
import numpy as np
import pytest
from bluesky import RunEngine
from event_model import compose_run
from ptycho_support import WAIT_S, Recorder
from subprocess_support import run_python

from bluesky_ptycho.server.app import ServeArguments, UnsafePickleWarning, make_codec
from bluesky_ptycho.server.sequencer import RunSequencer
from bluesky_ptycho.server.service import ReconstructionService
from bluesky_ptycho.server.settings import load_config
from bluesky_ptycho.server.transport import Codec, MessageRefused, RunKeys, pack
from bluesky_ptycho.server.zmq_bus import ZmqSource
from bluesky_ptycho.sim.beamline import make_beamline


def test_codec_round_trip_is_msgpack_numpy_compatible():
    doc = {
        "frame": np.arange(12, dtype="<u2").reshape(3, 4),
        "complex": np.ones((2, 2), np.complex64),
        "record": np.zeros(2, dtype=[("a", "<f4"), ("b", "<i8")]),
        "scalar": np.float32(1.5),
        "text": "x",
        "nested": {"n": [1, 2.5, None, True]},
    }
    codec = Codec()
    for payload in (pack(doc), msgpack_numpy.packb(doc)):  # ours and msgpack-numpy's
        out = codec.decode_document(payload)
        for key in ("frame", "complex", "record"):
            assert out[key].dtype == doc[key].dtype and np.array_equal(out[key], doc[key])
        assert out["scalar"] == np.float32(1.5) and out["nested"] == doc["nested"]
    theirs = msgpack_numpy.unpackb(pack(doc))
    assert np.array_equal(theirs["frame"], doc["frame"])
    assert codec.stats.messages == 2 and sum(codec.stats.refused.values()) == 0


class _Boom:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_codec_refuses_pickle_objects_giants_and_junk():
    codec = Codec(max_message_bytes=10_000)
    hidden = msgpack_numpy.packb({"a": np.array([_Boom()], dtype=object)})  # pickle inside
    cases = {
        "pickle": [pickle.dumps({"uid": "x"}), hidden],
        "oversized": [pack({"frame": np.zeros(20_000, np.uint8)})],
        "malformed": [b"\xc1", pack([1, 2]), pack({"a": {b"nd": True, b"type": "<f4"}})],
    }
    for kind, payloads in cases.items():
        for payload in payloads:
            with pytest.raises(MessageRefused) as refused:
                codec.decode_document(payload)
            assert refused.value.kind == kind
    assert codec.stats.refused == {"oversized": 1, "pickle": 2, "malformed": 3}
    with pytest.raises(MessageRefused, match="name, document"):
        codec.decode_message(pack(["bogus", {}]))
    with pytest.raises(TypeError, match="object array"):
        pack({"a": np.array([None], dtype=object)})


def test_unsafe_pickle_warns_and_accepts():
    with pytest.warns(UnsafePickleWarning):
        codec = make_codec(ServeArguments(zmq="127.0.0.1:1", unsafe_pickle=True))
    assert codec.decode_message(pickle.dumps(("start", {"uid": "u"}))) == ("start", {"uid": "u"})


def test_run_keys_follow_every_document_to_its_run():
    keys = RunKeys()
    expected = []
    for _ in range(2):
        run = compose_run()
        uid = run.start_doc["uid"]
        desc = run.compose_descriptor(
            name="primary", data_keys={"x": {"source": "s", "dtype": "number", "shape": []}}
        )
        resource = run.compose_resource(
            spec="NPY_SEQ", root="/", resource_path="f", resource_kwargs={}
        )
        stream = run.compose_stream_resource(
            mimetype="application/x-hdf5", uri="file://localhost/f.h5", data_key="x", parameters={}
        )
        docs = [
            ("start", run.start_doc),
            ("descriptor", desc.descriptor_doc),
            ("event", desc.compose_event(data={"x": 1}, timestamps={"x": 0})),
            ("resource", resource.resource_doc),
            ("datum", resource.compose_datum(datum_kwargs={})),
            ("stream_resource", stream.stream_resource_doc),
            ("stream_datum", stream.compose_stream_datum(indices={"start": 0, "stop": 1})),
            ("stop", run.compose_stop()),
        ]
        expected += [(name, doc, uid) for name, doc in docs]
    for name, doc, uid in expected:
        assert keys.key(name, doc) == uid, name


def test_config_file_toml_and_yaml(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text(
        textwrap.dedent(
            """
            [callback]
            backend = "cupy"
            refine_iterations = 200
            [kafka.consumer]
            "security.protocol" = "SASL_SSL"
            """
        )
    )
    config = load_config(toml)
    assert config.callback == {"backend": "cupy", "refine_iterations": 200}
    assert config.kafka_consumer == {"security.protocol": "SASL_SSL"}
    yaml_file = tmp_path / "serve.yaml"
    yaml_file.write_text("callback:\n  refine_iterations: 5\nkafka:\n  producer:\n    acks: all\n")
    config = load_config(yaml_file)
    assert config.callback == {"refine_iterations": 5} and config.kafka_producer == {"acks": "all"}
    bad = tmp_path / "bad.toml"
    bad.write_text("[calback]\nx = 1\n")
    with pytest.raises(ValueError, match=r"bad.toml: unknown table\(s\) \['calback'\]"):
        load_config(bad)
    bad.write_text("[callback\n")
    with pytest.raises(ValueError, match="bad.toml: TOMLDecodeError"):
        load_config(bad)


def test_publish_helper_imports_no_gpu_or_engine_packages(tmp_path):
    code = (
        "import sys\n"
        "import bluesky_ptycho.publish\n"
        "heavy = {'cupy', 'cupyx', 'bluesky_kafka', 'confluent_kafka', 'zmq'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    done = run_python(code, tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_service_names_events_lost_on_the_bus_in_the_derived_stop():
    beamline = make_beamline(64, max_points=40, seed=0)
    recorder = Recorder()
    options = {"backend": "numpy", "refine_iterations": 5, "snapshot_interval_s": 0.0}
    service = ReconstructionService(ZmqSource("127.0.0.1:1", Codec()), options, [recorder])

    def bus(name, doc):  # a transport that dropped two events
        if not (name == "event" and doc["seq_num"] in (5, 6)):
            service.dispatch(name, doc)

    engine = RunEngine({})
    engine.subscribe(bus)
    x, y = beamline.positions_um(40)
    plan = bp.list_scan([beamline.inline_detector()], beamline.sx, list(x), beamline.sy, list(y))
    (uid,) = engine(plan, ptycho=beamline.metadata("det_image"))
    try:
        assert service.callback.wait(timeout=WAIT_S)
    finally:
        assert service.callback.close(timeout=WAIT_S)
    stop = recorder.of(uid)[-1][1]
    assert "2 event(s) of the raw run never reached serve (primary: 2)" in stop["reason"]
    record = service.status()
    assert record["events_lost_on_bus"] == 2 and record["runs_finished"] == 1
    assert record["frames_in"] == 38


def _run_documents(n_events: int) -> list[tuple[str, dict]]:
    run = compose_run()
    desc = run.compose_descriptor(
        name="primary", data_keys={"x": {"source": "s", "dtype": "number", "shape": []}}
    )
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    docs += [
        ("event", desc.compose_event(data={"x": i}, timestamps={"x": 0})) for i in range(n_events)
    ]
    return docs + [("stop", run.compose_stop())]


def test_sequencer_hands_interleaved_runs_over_one_at_a_time():
    a, b, c = _run_documents(3), _run_documents(2), _run_documents(1)
    mixed = [a[0], a[1], b[0], a[2], b[1], c[0], b[2], a[3], c[1], b[3], a[4], c[2], b[4], a[5]]
    mixed += c[3:]
    assert sorted(map(id, (d for _, d in mixed))) == sorted(id(d) for _, d in a + b + c)
    received = Recorder()
    sequencer = RunSequencer(received)
    for name, doc in mixed:
        sequencer(name, doc)
    assert [d for _, d in received.docs] == [d for _, d in a + b + c]  # runs in start order
    assert sequencer.held_documents == 0 and sequencer.released_early == 0


def test_sequencer_releases_held_runs_when_the_active_one_goes_stale():
    a, b = _run_documents(2), _run_documents(1)
    received = Recorder()
    sequencer = RunSequencer(received, stale_s=0.05)
    for name, doc in a[:3] + b:  # run a never ends
        sequencer(name, doc)
    assert len(received.docs) == 3 and sequencer.held_documents == len(b)
    time.sleep(0.1)
    sequencer.tick()
    assert [d for _, d in received.docs] == [d for _, d in a[:3] + b]
    assert sequencer.released_early == 1
