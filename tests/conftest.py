"""Shared fixtures: seeded data with a planted factorization, stores on disk."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def distributed_client():
    """A real LocalCluster with two worker processes (one thread each)."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        host="127.0.0.1",
    )
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)``: a real tmpfs of that size mounted in tmp_path (a full disk).

    Needs root (CAP_SYS_ADMIN); skipped, with the reason, where mounting is refused.
    """
    import os
    import subprocess

    mounted = []

    def mount(size: str = "1m", name: str = "disk"):
        path = tmp_path / name
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs for a full disk here (not root?): "
                        f"{done.stderr.strip() or done.returncode}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        os.sync()
