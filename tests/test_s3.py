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
    # the run's lock (on the out URL) is taken first, so the out is the one named
    assert_user_error(proc, 1, r"cannot reach the object store at http://127\.0\.0\.1:\d+ "
                               r"for s3://dnmf-test/(v|runs/x)\.zarr")
    assert time.monotonic() - started < 20  # two refusals, no retries with backoff
    assert list(tmp_path.iterdir()) == []


def test_run_records_storage_options_without_secrets_and_resume_reopens_with_them(
        s3, data_url, V, tmp_path):
    # Issue 15: the input's non-secret options (endpoint, region) are recorded in the
    # run; its secrets are not, and come from the environment (the fixture's AWS_*
    # variables) when resume reopens V. No process-wide defaults here.
    import json
    import subprocess
    import sys

    import fsspec.config

    assert "s3" not in fsspec.config.conf
    src = dnmf.open_source(data_url, storage_options={
        "endpoint_url": s3, "key": "AKIDSECRETVALUE", "secret": "TOPSECRETVALUE",
        "client_kwargs": {"region_name": "us-east-1", "aws_session_token": "TOKENVALUE"}})
    out = tmp_path / "run.zarr"
    _quiet(_model(max_iter=3, out=str(out)).fit, src)
    text = (out / "manifest.json").read_text()
    for secret in ("AKIDSECRETVALUE", "TOPSECRETVALUE", "TOKENVALUE"):
        assert secret not in text
    run = dnmf.open_run(str(out))
    assert run.source["location"] == data_url
    assert run.source["storage_options"] == {"endpoint_url": s3,
                                             "client_kwargs": {"region_name": "us-east-1"}}
    # resume in Python with no options at all: reopened from the record
    resumed = _quiet(dnmf.resume, str(out), max_iter=6)
    whole = _quiet(_model(max_iter=6).fit, V)
    assert resumed.iteration == 6
    np.testing.assert_array_equal(resumed.H, whole.components_)
    # and from the command line, in a real process with the secrets in its environment
    proc = subprocess.run([sys.executable, "-m", "dnmf", "resume", str(out), "--max-iter",
                           "8"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(subprocess.run([sys.executable, "-m", "dnmf", "info", str(out),
                                      "--json"], capture_output=True, text=True,
                                     timeout=300).stdout)
    assert info["iteration"] == 8 and info["source"]["storage_options"]["endpoint_url"] == s3
    # the same online: MiniBatchNMF's run records them too, dnmf.resume reopens V
    online = tmp_path / "online.zarr"
    _quiet(dnmf.MiniBatchNMF(3, init="random", batch_size=20, max_iter=2, random_state=0,
                             out=str(online)).fit, src)
    assert dnmf.open_run(str(online)).source["storage_options"]["endpoint_url"] == s3
    assert _quiet(dnmf.resume, str(online), max_iter=4).n_iter == 4


def test_s3_defaults_fail_fast_and_are_overridable(monkeypatch):
    # Issue 16: botocore's legacy retries (5 attempts with backoff) are replaced by a
    # 5 s connect timeout and 2 attempts, under whatever the user gives.
    import fsspec.config

    from dnmf.io._remote import public_options, remote_options

    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    monkeypatch.setattr(fsspec.config, "conf", {})
    opts = remote_options("s3://b/x")
    assert opts["config_kwargs"] == {"connect_timeout": 5,
                                     "retries": {"max_attempts": 2, "mode": "standard"}}
    assert remote_options("gs://b/x") == {} and remote_options("/local/x") == {}
    dnmf.io.set_storage_options("s3", config_kwargs={"retries": {"max_attempts": 7}})
    opts = remote_options("s3://b/x", {"config_kwargs": {"connect_timeout": 1}})
    assert opts["config_kwargs"] == {"connect_timeout": 1,
                                     "retries": {"max_attempts": 7, "mode": "standard"}}
    monkeypatch.setattr(fsspec.config, "conf", {})
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "9")
    assert "retries" not in remote_options("s3://b/x")["config_kwargs"]
    assert public_options({"anon": False, "key": "k", "secret": "s", "token": "t",
                           "profile": "p", "password": "x", "session": object(),
                           "client_kwargs": {"aws_secret_access_key": "s"}}) == \
        {"anon": False, "profile": "p"}


@pytest.mark.heavy  # suite time; the local races stay
def test_two_fits_into_one_url_started_together_one_is_refused(s3, tmp_path):
    # Issue 16: the command line holds the run's lock for a URL --out too (taken where
    # the fit takes it, in the object store), so the second is refused in one line.
    import subprocess
    import sys

    V = planted(400, 30, 3, seed=2, noise=0.01)[0]
    np.save(tmp_path / "V.npy", V)
    args = [sys.executable, "-m", "dnmf", "fit", "V.npy", "--rank", "3", "--seed", "1",
            "--max-iter", "15", "--tol", "0", "--out", f"s3://{BUCKET}/runs/race.zarr",
            "--storage-option", f"endpoint_url={s3}"]
    procs = []
    for _ in range(2):
        procs.append(subprocess.Popen(args, cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
        time.sleep(0.3)
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(r[0] for r in results) == [0, 1], results
    loser = next(r for r in results if r[0] == 1)
    lines = loser[2].strip().splitlines()
    assert len(lines) == 1 and "is being written by another process" in lines[0], loser
    import fsspec.config

    saved = dict(fsspec.config.conf)
    try:
        dnmf.io.set_storage_options("s3", endpoint_url=s3)
        run = dnmf.open_run(f"s3://{BUCKET}/runs/race.zarr")
    finally:
        fsspec.config.conf.clear()
        fsspec.config.conf.update(saved)
    solo = _quiet(dnmf.NMF(3, tol=0, random_state=1, max_iter=15).fit, V)
    assert run.iteration == 15
    np.testing.assert_allclose(run.H, solo.components_, rtol=1e-10)
