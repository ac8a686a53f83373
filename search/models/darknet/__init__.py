"""Darknet cfgs as networks: read and write cfgs (``cfg``), check and resolve their layers
(``network``), build them in Keras (``builder``), load and save ``.weights`` (``weights``), and make
a ``ModelFamily`` of one (``family``). Only ``builder`` imports TensorFlow, when it is imported.
"""
