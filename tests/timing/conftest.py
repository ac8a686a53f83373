"""What the timing tests share: the node's latency cache in a folder of the test's own."""

from __future__ import annotations

import pytest

from search.timing import reference


@pytest.fixture
def node_cache(tmp_path, monkeypatch):
    """The node's latency cache in a folder of the test's own (not the machine's /tmp/yolo-search)."""
    monkeypatch.setattr(reference, "NODE_CACHE", tmp_path / "latency")
    return tmp_path / "latency"
