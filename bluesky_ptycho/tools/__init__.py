"""Tools around the plugin, not part of it: the demo and the benchmarks.

* :mod:`.demo` - a live reconstruction of a simulated scan stored in an embedded
  Tiled server (``bluesky-ptycho demo``; needs the ``demo`` extra);
* :mod:`.bench_callback` - what the callback costs a CPU-bound RunEngine scan
  (``bluesky-ptycho bench-callback``; needs the ``demo`` extra);
* :mod:`.bench_load` - a 20,000-frame scan delivered back to back
  (``python -m bluesky_ptycho.tools.bench_load``; needs the ``demo`` extra).
* :mod:`.bench_live` - frame -> snapshot latency of a scan streamed through
  the callback at a detector's rate (``bluesky-ptycho bench-live``; event-model
  only, no Bluesky stack: runs on the GPU host).

The plugin's packages (``engine``, ``callback``, ``outputs``, ``calibration``)
never import from here.
"""
