"""One Ray session for the whole test run (Ray costs seconds to start), kept on loopback."""

from __future__ import annotations

import os

import pytest
from s3_server import TEST_KEY, TEST_SECRET

# Loopback only, and let subprocess drivers (resume and CLI tests) join this session.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Ray workers inherit the environment Ray started with (curate forwards no credentials): the S3 test
# server's keys, and nothing else of AWS's, are in it from the start.
os.environ.update(AWS_ACCESS_KEY_ID=TEST_KEY, AWS_SECRET_ACCESS_KEY=TEST_SECRET)
for _name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def ray_session():
    """Address of a shared local Ray (2 CPUs, 400 MB object store)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=400_000_000, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def footage_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("footage")
