"""serve --zmq end to end: RunEngine -> bluesky-0MQ-proxy -> serve (another process) ->
derived documents republished on the proxy; bad messages refused, serving goes on;
SIGTERM mid-run ends the derived run with a truthful stop."""

from __future__ import annotations

import pickle
import signal
import time

import bluesky.plans as bp
import pytest
import zmq
from bluesky import RunEngine
from ptycho_support import check_derived_run
from serve_support import (
    BIN,
    CALLBACK_TOML,
    RESULT_KEYS,
    DerivedListener,
    Process,
    derived_nrmse,
    free_port,
    read_status,
    result_nrmse,
    serve_process,
    wait_for,
    write_config,
)
from tiled.client import from_uri
from tiled.server import SimpleTiledServer
from tiled_support import API_KEY

from bluesky_ptycho.publish import zmq_publisher
from bluesky_ptycho.server.transport import Codec, pack
from bluesky_ptycho.server.zmq_bus import ZmqSource
from bluesky_ptycho.sim.beamline import make_beamline
from bluesky_ptycho.tools.demo import close_server

TARGET_NRMSE = 0.10
POINTS = 80
MAX_MESSAGE_BYTES = 1_000_000  # a 64 x 64 float64 frame event is ~33 kB


@pytest.fixture
def tiled(tmp_path):
    """An embedded Tiled server (derived runs go there through serve --tiled).

    Embedded servers in one process share tiled's settings, the API key included:
    use the key of the session's shared server (tiled_support), or that one's
    clients get 401 while this one runs.
    """
    server = SimpleTiledServer(directory=tmp_path / "tiled", api_key=API_KEY)
    client = from_uri(server.uri)
    yield server, client
    client.context.close()
    close_server(server)


@pytest.fixture
def proxy(tmp_path):
    """A real bluesky-0MQ-proxy on 127.0.0.1: (in-address, out-address)."""
    port_in, port_out = free_port(), free_port()
    process = Process(
        [
            str(BIN / "bluesky-0MQ-proxy"),
            "--in-address",
            f"127.0.0.1:{port_in}",
            "--out-address",
            f"127.0.0.1:{port_out}",
        ],
        tmp_path / "proxy.log",
    )
    time.sleep(0.5)
    assert process.popen.poll() is None, process.text()
    yield f"127.0.0.1:{port_in}", f"127.0.0.1:{port_out}"
    process.stop()


def _scan(engine, beamline, points):
    x, y = beamline.positions_um(points)
    plan = bp.list_scan([beamline.inline_detector()], beamline.sx, list(x), beamline.sy, list(y))
    (uid,) = engine(plan, ptycho=beamline.metadata("det_image"))
    return uid


def test_zmq_serve_reconstructs_refuses_bad_messages_and_stops_truthfully(tmp_path, proxy, tiled):
    address_in, address_out = proxy
    tiled_server, client = tiled
    config = write_config(tmp_path / "serve.toml", CALLBACK_TOML)
    server, status = serve_process(
        [
            "--zmq",
            address_out,
            "--publish",
            address_in,
            "--config",
            str(config),
            "--max-message-bytes",
            str(MAX_MESSAGE_BYTES),
            "--tiled",
            tiled_server.uri.split("?")[0],
        ],
        tmp_path,
        env_extra={"TILED_API_KEY": tiled_server.api_key},  # not on the command line
    )
    listener = DerivedListener(ZmqSource(address_out, Codec(), prefix=b"ptycho"))
    publisher = zmq_publisher(address_in)
    context = zmq.Context()
    try:
        wait_for(lambda: read_status(status).get("state") == "serving", 60, "serve", server)
        time.sleep(1.0)  # 0MQ slow joiner: the server's subscription reaches the proxy
        # bad messages first: a pickle (bluesky's default serializer), a giant, junk
        raw = context.socket(zmq.PUB)  # what bluesky's Publisher sends: b"prefix name payload"
        raw.connect(f"tcp://{address_in}")
        time.sleep(1.0)  # slow joiner
        raw.send(b" start " + pickle.dumps({"uid": "x", "time": 0.0}))
        raw.send(b" event " + pack({"blob": b"0" * (2 * MAX_MESSAGE_BYTES)}))
        raw.send(b" descriptor \xc1\xc1 not msgpack")
        raw.send(b" no-such-document " + pack({"uid": "y"}))

        def refused():
            counts = read_status(status).get("transport", {}).get("refused", {})
            return counts if sum(counts.values()) >= 4 else None

        counts = wait_for(refused, 30, "4 refusals", server)
        raw.close()
        assert counts == {"oversized": 1, "pickle": 1, "malformed": 2}
        assert server.popen.poll() is None

        # then a real scan: it is still served
        beamline = make_beamline(64, max_points=POINTS, seed=0)
        engine = RunEngine({})
        engine.subscribe(publisher)
        uid = _scan(engine, beamline, POINTS)
        wait_for(listener.stops, 180, "the derived stop document", server)
        docs = listener.recorder.of(uid)
        check_derived_run(docs)
        assert docs[-1][1]["exit_status"] == "success", docs[-1][1]
        nrmse = derived_nrmse(docs, beamline)
        print(f"NRMSE as delivered over 0MQ: {nrmse:.4f}")
        assert nrmse <= TARGET_NRMSE
        primary = client[docs[0][1]["uid"]]["primary"]  # the same result stored in Tiled
        stored = {key: primary[key].read()[0] for key in RESULT_KEYS}
        assert result_nrmse(stored, beamline) == pytest.approx(nrmse, rel=1e-6)
        record = read_status(status)
        assert record["runs_seen"] == 1 and record["runs_finished"] == 1

        # a second scan, cut by SIGTERM before its stop document: a truthful derived stop
        beamline.exposure_s = 0.05
        uid2 = None

        def interrupt_mid_scan(name, doc):
            if name == "event" and doc["seq_num"] == 40:
                server.stop_signal = signal.SIGTERM
                import os

                os.kill(server.pid, signal.SIGTERM)

        engine.subscribe(interrupt_mid_scan)
        uid2 = _scan(engine, beamline, 80)
        assert server.popen.wait(60) == 0, server.text()[-3000:]
        wait_for(lambda: len(listener.stops()) == 2, 30, "the second derived stop", server)
        stop = listener.recorder.of(uid2)[-1][1]
        assert stop["exit_status"] == "abort"
        assert "SIGTERM" in stop["reason"] and "before the raw run's stop" in stop["reason"]
        derived2 = listener.recorder.of(uid2)[0][1]["uid"]
        assert client[derived2].metadata["stop"]["exit_status"] == "abort"
        assert read_status(status)["state"] == "stopped"
    finally:
        context.destroy()
        publisher.close()
        listener.close()
        server.stop()
