"""Timing ``.tflite`` models in LiteRT: absolute (``absolute``), against the latency reference
(``interleaved``; the reference's recipe in ``reference``, built at the trial's resolution:
``rungs``), and what a latency target's node measures (``on_node``).

Needs numpy and LiteRT only, and imports nothing else of the package that would need more, so a
device node that joins the cluster to measure (``pip install`` of the ``[device]`` extra's
packages) runs it as it is.
"""
