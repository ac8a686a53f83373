"""Fixtures several test modules start (an S3-compatible object store on 127.0.0.1), and how the
suite shares the machine's cores (``make test`` runs it on ``pytest-xdist`` workers)."""

from __future__ import annotations

import logging
import os
import socket
import uuid

import pytest

# Credentials of the local store below (it accepts any); every process that talks to it needs
# them in its environment, the Ray nodes of tests/test_cluster.py too.
S3_ENV = {"AWS_ACCESS_KEY_ID": "search-tests", "AWS_SECRET_ACCESS_KEY": "search-tests", "AWS_DEFAULT_REGION": "us-east-1"}


def pytest_collection_modifyitems(config, items):
    """One xdist group per test file, so a module's fixtures (a fine-tuned model, a search) are made
    once, on one worker; and one group for every test marked ``ray``: two Ray runtimes started at
    once on one machine (an embedded one and a test cluster's ``ray start``) break each other, so
    those tests run one after another on one worker. Only ``--dist loadgroup`` reads the groups."""
    for item in items:
        group = "ray" if item.get_closest_marker("ray") else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """An S3 server (moto's, in this process) on 127.0.0.1; yields its ``endpoint_override``.

    The project's code talks to it exactly as to AWS S3 (pyarrow's S3 client, over HTTP); only
    the endpoint differs. Nothing is sent anywhere but 127.0.0.1.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    os.environ.update(S3_ENV)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_storage(s3_server) -> str:
    """A new bucket on the local S3 server, as the ``s3://`` URI a user gives ``--storage``."""
    from pyarrow import fs

    bucket = f"search-{uuid.uuid4().hex[:12]}"
    fs.S3FileSystem(endpoint_override=s3_server, scheme="http", region="us-east-1",
                    allow_bucket_creation=True).create_dir(bucket)
    return f"s3://{bucket}/search?endpoint_override={s3_server}&scheme=http&region=us-east-1"
