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


# The test files that start Ray (an embedded runtime or a test cluster). Two Ray runtimes started
# at once on one machine break each other (a port taken, a driver joining the other's cluster), so
# under pytest-xdist these files run one after another on one worker.
RAY_TEST_FILES = ("tests/test_cluster.py", "tests/test_device_targets.py", "tests/test_resume.py",
                  "tests/test_search_smoke.py")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: no error where it is not loaded
def pytest_xdist_make_scheduler(config, log):
    """Whole test files to a worker (so a module's fixture, a fine-tuned model or a search, is made
    once), and every Ray test file to the same worker. (xdist's own ``loadgroup`` cannot do it under
    pytest 9: it renames test ids through an attribute pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FilesRayTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::")[0]
            return "ray" if path in RAY_TEST_FILES else path

    return FilesRayTogether(config, log)


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
