"""Object stores for real: an S3 server (moto's, on 127.0.0.1) holding the input and
the run store; the commit protocol there, resume from S3, options passed through,
and an unreachable endpoint as one fast error."""

from __future__ import annotations

import os
import socket
import time
import warnings

import numpy as np
import pytest
import zarr

import dnmf
from dnmf.errors import StoreError
from dnmf.testing import planted

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

BUCKET = "dnmf-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; its endpoint URL."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
    try:
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def V():
    return planted(80, 12, 3, seed=11, noise=0.01)[0]


@pytest.fixture(scope="module")
def data_url(s3, V):
    url = f"s3://{BUCKET}/v.zarr"
    z = zarr.create_array(store=url, shape=V.shape, chunks=(20, 12), dtype=V.dtype,
                          storage_options={"endpoint_url": s3})
    z[:] = V
    return url


@pytest.fixture()
def defaults(s3):
    """fsspec defaults for s3:// pointing at the server, removed afterwards."""
    import fsspec.config

    saved = dict(fsspec.config.conf)
    dnmf.io.set_storage_options("s3", endpoint_url=s3)
    yield
    fsspec.config.conf.clear()
    fsspec.config.conf.update(saved)


def _model(**kw):
    return dnmf.NMF(3, init="nndsvda", tol=0, random_state=0, **kw)


def _quiet(f, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*args, **kw)


def test_input_from_s3_with_storage_options(s3, data_url, V):
    src = dnmf.open_source(data_url, storage_options={"endpoint_url": s3})
    assert (src.shape, src.location) == (V.shape, data_url)
    remote = _quiet(_model(max_iter=10).fit_transform, src)
    local = _quiet(_model(max_iter=10).fit_transform, V)
    np.testing.assert_array_equal(np.asarray(remote), local)


def test_run_store_on_s3_commits_and_resumes(s3, data_url, V, defaults):
    out = f"s3://{BUCKET}/runs/a.zarr"
    _quiet(_model(max_iter=4, out=out, checkpoint_every=2).fit, data_url)
    import boto3

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3).list_objects_v2(
        Bucket=BUCKET, Prefix="runs/a.zarr/manifests/")["Contents"]]
    assert keys and all(k.endswith(".json") for k in keys)  # one object per commit
    assert not any(k.endswith("runs/a.zarr/manifest.json") for k in keys)
    run = _quiet(dnmf.resume, out, max_iter=9)
    assert run.iteration == 9 and run.complete
    whole = _quiet(_model(max_iter=9).fit, V)
    np.testing.assert_array_equal(run.H, whole.components_)
    np.testing.assert_array_equal(np.asarray(run.W), _quiet(
        _model(max_iter=9).fit_transform, V))


def test_cli_fit_resume_info_on_s3(s3, data_url, tmp_path, capsys, monkeypatch):
    from test_cli import ok, run_here

    opts = ["--storage-option", f"endpoint_url={s3}"]
    out = f"s3://{BUCKET}/runs/cli.zarr"

    def here(*args):
        return run_here(*args, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)

    ok(here("fit", data_url, "--rank", "3", "--out", out, "--seed", "0", "--max-iter", "3",
            *opts))
    ok(here("resume", out, "--max-iter", "6", *opts))
    info = ok(here("info", out, "--json", *opts)).stdout
    assert '"iteration": 6' in info and f'"location": "{data_url}"' in info
    assert list(tmp_path.iterdir()) == []  # nothing written locally


def test_unreachable_endpoint_is_one_fast_error(data_url, tmp_path, capsys, monkeypatch):
    from test_cli import assert_user_error, run_here

    dead = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(StoreError, match=rf"cannot reach the object store at {dead}"):
        dnmf.open_source(data_url, storage_options={"endpoint_url": dead})
    proc = run_here("fit", data_url, "--rank", "2", "--out", f"s3://{BUCKET}/runs/x.zarr",
                    "--storage-option", f"endpoint_url={dead}", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert_user_error(proc, 1, r"cannot reach the object store at http://127\.0\.0\.1:\d+ "
                               r"for s3://dnmf-test/v\.zarr")
    assert time.monotonic() - started < 20  # two refusals, no retries with backoff
    assert list(tmp_path.iterdir()) == []
