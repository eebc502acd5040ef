"""``bluesky-ptycho serve``: the reconstruction server fed by a document bus.

* :mod:`.transport` - data-only (msgpack + msgpack-numpy) encoding, message size
  bounds, refusal counters, the run key of every document;
* :mod:`.zmq_bus` / :mod:`.kafka_bus` - consume from a ``bluesky-0MQ-proxy``
  (bluesky's ``RemoteDispatcher``) or Kafka (bluesky-kafka), republish derived runs;
* :mod:`.service` - the callback, derived-document sinks, health, shutdown;
* :mod:`.settings` - the ``--config`` file (TOML or YAML).

Importing this package imports nothing beyond the standard library; the RunEngine
host needs only :mod:`bluesky_ptycho.publish`. See docs/deployment.md.
"""
