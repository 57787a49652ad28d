"""dnmf.select_rank: consensus and cross-validation find planted ranks; sweep stores.

The default run uses small matrices and short grids around the planted rank; the
full grid 2..20 for k* = 4, 8, 12 (dense and sparse, Frobenius and KL, both
methods) is ``@pytest.mark.heavy``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import scipy.sparse as sp

import dnmf
from dnmf._rank import (
    cophenetic_correlation,
    match_components,
    row_labels,
    silhouettes,
)
from dnmf.errors import IncompatibleRunError, InvalidParameterError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def planted_rank(n, m, k, *, seed=0, kind="dense", loss="frobenius", noise=0.05):
    """V with planted rank k: W·H of sparse non-negative factors, plus noise.

    Dense: V = max(WH + noise·(|N(0, 1)| − E|N|), 0). Sparse: W and H sparser, noise
    only where WH is non-zero, V as CSR. KL: Poisson counts of 20·WH (sparse: zeros
    stay zeros). The noise is centred: uncentred half-normal noise adds its mean
    noise·√(2/π) to every entry (dense), a constant matrix, i.e. one more non-negative
    component — E[V] then has rank k + 1, which cross-validation rightly found (on
    k* = 4 and 8 it chose k* + 1 and its extra component was flat: the coefficient of
    variation of its row of H 0.39, against 1.2-1.4 for the planted ones).
    """
    rng = np.random.default_rng(seed)
    W = rng.random((n, k)) * (rng.random((n, k)) < 0.5)
    H = rng.random((k, m)) * (rng.random((k, m)) < (0.3 if kind == "sparse" else 0.5))
    # every component used by some rows and some columns
    W[np.arange(k) % n, np.arange(k)] += 1.0
    H[np.arange(k), np.arange(k) % m] += 1.0
    WH = W @ H
    if loss == "kl":
        V = rng.poisson(20.0 * WH).astype(np.float64)
    else:
        centred = np.abs(rng.standard_normal(WH.shape)) - np.sqrt(2.0 / np.pi)
        V = np.maximum(WH + noise * centred * (WH > 0 if kind == "sparse" else 1.0), 0.0)
    return (sp.csr_matrix(V) if kind == "sparse" else V), W, H


def _loss_params(loss):
    return {"solver": "mu", "beta_loss": "kullback-leibler"} if loss == "kl" else {}


def _comparable(rows):
    """The table without the wall time of each fit."""
    return [{key: value for key, value in row.items() if key != "time"} for row in rows]


# ------------------------------------------------------------ the criteria
def test_cophenetic_is_one_for_agreeing_restarts_and_lower_for_random():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 4, size=60)
    relabelled = np.stack([base, (base + 1) % 4, 3 - base])  # same clustering, other names
    assert cophenetic_correlation(relabelled) == pytest.approx(1.0, abs=1e-12)
    noisy = np.stack([rng.integers(0, 4, size=60) for _ in range(5)])
    assert cophenetic_correlation(noisy) < 0.8


def test_silhouettes_match_scikit_learn_cosine():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    points = rng.random((30, 7))
    labels = rng.integers(0, 3, size=30)
    ours = silhouettes(points, labels)
    theirs = metrics.silhouette_samples(points, labels, metric="cosine")
    np.testing.assert_allclose(ours, theirs, atol=1e-10)


def test_match_components_undoes_permutation_and_scaling():
    rng = np.random.default_rng(2)
    H = rng.random((5, 40))
    perms = [rng.permutation(5) for _ in range(3)]
    Hs = [H] + [H[p] * rng.uniform(0.5, 2.0, size=(5, 1)) for p in perms]
    assign = match_components(Hs)
    for p, a in zip(perms, assign[1:]):
        # cluster c of fit r holds its component a[c], which is H's row p[a[c]] = c
        np.testing.assert_array_equal(p[a], np.arange(5))


def test_row_labels_are_invariant_to_the_scaling_of_components():
    rng = np.random.default_rng(3)
    W, H = rng.random((20, 4)), rng.random((4, 10))
    D = np.array([0.1, 10.0, 1.0, 3.0])
    np.testing.assert_array_equal(row_labels(W, H), row_labels(W * D, H / D[:, None]))


# ------------------------------------------------------------ planted rank
@pytest.mark.parametrize(("kind", "loss"), [("dense", "frobenius"), ("sparse", "kl")])
def test_consensus_finds_planted_rank_4(kind, loss):
    V, _, H_true = planted_rank(120, 60, 4, seed=4, kind=kind, loss=loss)
    res = dnmf.select_rank(V, range(2, 7), method="consensus", n_replicates=3,
                           max_iter=150, tol=1e-5, **_loss_params(loss))
    assert res.k == 4, res.summary.to_string()
    summary = res.summary.set_index("k")
    assert summary.loc[4, "stability"] > 0.9
    assert summary.loc[5, "stability"] < 0.8
    assert list(res.table.columns[:3]) == ["k", "replicate", "seed"]
    assert len(res.table) == 5 * 3
    # The consensus H is the planted H up to order and scale (cosine > 0.95 each).
    from scipy.optimize import linear_sum_assignment

    unit = lambda A: A / np.linalg.norm(A, axis=1, keepdims=True)  # noqa: E731
    cos = unit(res.consensus_H) @ unit(H_true).T
    rows, cols = linear_sum_assignment(-cos)
    assert cos[rows, cols].min() > 0.95
    W = np.asarray(res.consensus_W)
    assert W.shape == (120, 4) and W.min() >= 0
    Vd = V.toarray() if sp.issparse(V) else V
    rel = np.linalg.norm(Vd - W @ res.consensus_H) / np.linalg.norm(Vd)
    assert rel < 0.3


@pytest.mark.parametrize(("kind", "loss"), [("dense", "frobenius"), ("sparse", "kl")])
def test_cv_finds_planted_rank_4(kind, loss, tmp_path):
    V, _, _ = planted_rank(120, 60, 4, seed=4, kind=kind, loss=loss)
    res = dnmf.select_rank(V, range(2, 7), method="cv", n_replicates=3, max_iter=100,
                           tol=1e-5, out=tmp_path / "cv", **_loss_params(loss))
    assert res.k == 4, res.summary.to_string()
    assert res.rule == "1se"
    table = res.table
    assert list(table.columns) == ["k", "replicate", "seed", "test_error", "n_heldout", "loss",
                                   "iterations", "time"]
    # Replicate r holds out the same entries for every k: about 5 % of them.
    per_replicate = table.groupby("replicate")["n_heldout"].nunique()
    assert (per_replicate == 1).all()
    expected, sd = 0.05 * V.shape[0] * V.shape[1], np.sqrt(0.05 * 0.95 * V.shape[0] * V.shape[1])
    assert np.all(np.abs(table["n_heldout"] - expected) < 5 * sd)
    summary = res.summary.set_index("k")
    # Below k* the held-out entries are predicted much worse; at k* about the noise.
    assert summary.loc[3, "test_error"] > 2 * summary.loc[4, "test_error"]
    # Another rule on the same sweep store: read from its table, nothing refitted.
    by_min = dnmf.select_rank(V, range(2, 7), method="cv", n_replicates=3, max_iter=100,
                              tol=1e-5, rule="min", out=tmp_path / "cv", **_loss_params(loss))
    assert by_min.rows == res.rows
    assert by_min.k == int(summary["test_error"].idxmin())
    assert by_min.k >= res.k


# ------------------------------------------------------------ sweep stores
def test_sweep_store_continues_without_refitting(tmp_path):
    V, _, _ = planted_rank(60, 30, 3, seed=5)
    out = tmp_path / "sweep"
    first = dnmf.select_rank(V, [2, 3, 4], method="consensus", n_replicates=2,
                             max_iter=30, out=out)
    assert first.path == str(out)
    table = json.loads((out / "table.json").read_text())["rows"]
    assert [(r["k"], r["replicate"]) for r in table] == [(k, r) for k in (2, 3, 4)
                                                         for r in (0, 1)]
    assert sorted(os.listdir(out / "fits")) == [f"k00{k}-r0{r}" for k in (2, 3, 4)
                                                for r in (0, 1)]
    again = dnmf.select_rank(V, [2, 3, 4], method="consensus", n_replicates=2,
                             max_iter=30, out=out)
    assert again.rows == first.rows  # times included: nothing was refitted
    assert again.k == first.k
    # The same sweep in memory gives the same table (but for the times).
    memory = dnmf.select_rank(V, [2, 3, 4], method="consensus", n_replicates=2, max_iter=30)
    assert _comparable(memory.rows) == _comparable(first.rows)
    # A wider grid keeps the finished fits and adds the new ones.
    wider = dnmf.select_rank(V, [2, 3, 4, 5], method="consensus", n_replicates=2,
                             max_iter=30, out=out)
    assert wider.rows[:6] == first.rows
    assert len(wider.rows) == 8


def test_sweep_store_refuses_other_parameters_and_other_directories(tmp_path):
    V, _, _ = planted_rank(40, 20, 2, seed=6)
    out = tmp_path / "sweep"
    dnmf.select_rank(V, [2], method="consensus", n_replicates=2, max_iter=5, out=out)
    with pytest.raises(IncompatibleRunError, match=r"nmf.max_iter: 5 \(sweep\) vs 6 \(now\)"):
        dnmf.select_rank(V, [2], method="consensus", n_replicates=2, max_iter=6, out=out)
    with pytest.raises(IncompatibleRunError, match="shape"):
        dnmf.select_rank(V[:30], [2], method="consensus", n_replicates=2, max_iter=5, out=out)
    res = dnmf.select_rank(V, [2], method="consensus", n_replicates=2, max_iter=6, out=out,
                           overwrite=True)
    assert [r["iterations"] for r in res.rows] == [6, 6]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(IncompatibleRunError, match="not a dnmf sweep"):
        dnmf.select_rank(V, [2], method="consensus", n_replicates=2, out=other)
    assert (other / "notes.txt").read_text() == "mine"


SWEEP_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_rank import planted_rank
    import dnmf
    V, _, _ = planted_rank(80, 40, 3, seed=7)
    dnmf.select_rank(V, [2, 3, 4], method="consensus", n_replicates=2, max_iter=200,
                     tol=0, out=sys.argv[1], n_concurrent=2, checkpoint_every=5)
""")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", pytest.param("SIGINT", marks=pytest.mark.heavy)])
def test_interrupted_sweep_continues_to_the_same_table(tmp_path, how):
    out = tmp_path / "sweep"
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP_SCRIPT.format(tests=HERE))
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen(
        [sys.executable, str(script), str(out)], env=env, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL) if how == "SIGKILL"
        else signal.signal(signal.SIGINT, signal.default_int_handler),
    )
    table = out / "table.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None:
        # stop it once a fit is done and another has started (not between two fits)
        if table.exists() and (rows := json.loads(table.read_text())["rows"]):
            keys = {f"k{r['k']:03d}-r{r['replicate']:02d}" for r in rows}
            if set(os.listdir(out / "fits")) - keys:
                break
        time.sleep(0.05)
    assert child.poll() is None, child.stderr.read().decode()[-2000:]
    child.send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGINT)
    _, err = child.communicate(timeout=120)
    done = json.loads(table.read_text())["rows"]
    assert 1 <= len(done) < 6
    if how == "SIGINT":
        assert b"KeyboardInterrupt" in err
    # Some fit was cut off mid-way: its run store is there, not in the table.
    started = set(os.listdir(out / "fits"))
    assert started - {f"k{r['k']:03d}-r{r['replicate']:02d}" for r in done}
    V, _, _ = planted_rank(80, 40, 3, seed=7)
    params = dict(method="consensus", n_replicates=2, max_iter=200, tol=0, n_concurrent=2,
                  checkpoint_every=5)
    continued = dnmf.select_rank(V, [2, 3, 4], out=out, **params)
    # The uninterrupted sweep (in memory: the same fits, shown equal above).
    reference = dnmf.select_rank(V, [2, 3, 4], **params)
    assert _comparable(continued.rows) == _comparable(reference.rows)
    for row in done:  # the fits finished before the interruption were not refitted
        again = next(r for r in continued.rows
                     if (r["k"], r["replicate"]) == (row["k"], row["replicate"]))
        assert {key: again[key] for key in row} == row
    np.testing.assert_array_equal(continued.consensus_H, reference.consensus_H)
    assert continued.k == reference.k


def _sweep_child(script, out, env_extra=None):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           **(env_extra or {})}
    return subprocess.Popen([sys.executable, str(script), str(out)], env=env,
                            stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.slow
def test_fits_killed_before_their_first_commit_are_restarted_cleanly(tmp_path):
    """SIGKILL exactly between a fit's run store being started and its first commit
    (the race the SIGKILL test above could hit under load), and what other kills in
    that stretch leave, are cleared and refitted by the continued sweep; the same
    states in a run store that is not being started stay refused."""
    from dnmf._store import LOCK, STARTING

    out = tmp_path / "sweep"
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP_SCRIPT.format(tests=HERE))
    marker = tmp_path / "paused"
    child = _sweep_child(script, out, {"DNMF_TEST_PAUSE_AT": "create:started",
                                       "DNMF_TEST_PAUSE_FILE": str(marker)})
    deadline = time.monotonic() + 240
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), child.stderr.read().decode()[-2000:]
    child.kill()
    child.communicate(timeout=60)
    fits = out / "fits"
    paused = [d for d in os.listdir(fits) if (fits / d / STARTING).exists()]
    assert paused, os.listdir(fits)
    assert not (fits / paused[0] / "zarr.json").exists()  # killed before the group
    done = {f"k{r['k']:03d}-r{r['replicate']:02d}"
            for r in json.loads((out / "table.json").read_text())["rows"]} \
        if (out / "table.json").exists() else set()
    # Other kills of that stretch, made by hand in fits not yet started: the group
    # metadata half written; a lock's temporary left by a kill while writing it.
    free = [f"k{k:03d}-r{r:02d}" for k in (2, 3, 4) for r in (0, 1)]
    free = [key for key in free if key not in done and not (fits / key).exists()]
    if free:
        half = fits / free[0]
        half.mkdir()
        (half / STARTING).write_text('{"run_id": "x"}')
        (half / "zarr.json").write_text('{"zarr_format": 3, "node_ty')
    if len(free) > 1:
        temp = fits / free[1]
        temp.mkdir()
        (temp / LOCK).write_text("{}")
        (temp / f".{LOCK}.k2j4x9").write_text('{"pid": 1')
    if len(free) > 2:  # killed while writing the start marker (its temporary)
        marking = fits / free[2]
        marking.mkdir()
        (marking / LOCK).write_text("{}")
        (marking / f".{STARTING}.p3v7q1").write_text('{"run_id": "ab')
    V, _, _ = planted_rank(80, 40, 3, seed=7)
    params = dict(method="consensus", n_replicates=2, max_iter=200, tol=0, n_concurrent=2,
                  checkpoint_every=5)
    continued = dnmf.select_rank(V, [2, 3, 4], out=out, **params)
    reference = dnmf.select_rank(V, [2, 3, 4], **params)
    assert _comparable(continued.rows) == _comparable(reference.rows)
    assert not any((fits / d / STARTING).exists() for d in os.listdir(fits))


def test_a_started_marker_alone_makes_debris_restartable_not_damage(tmp_path):
    """What separates a start to clear from damage to refuse: the start marker, present
    until the first commit. Buffers without group metadata and without the marker
    are not a dnmf run; a committed run that lost its manifest is damaged."""
    from dnmf._store import COMMITTED, MANIFEST, STARTING, RunStore
    from dnmf.errors import CorruptCheckpointError

    V, _, _ = planted_rank(40, 20, 2, seed=3)
    fit = dict(random_state=1, max_iter=5, tol=0)
    reference = dnmf.NMF(2, **fit).fit(V)
    started = tmp_path / "started"
    store = RunStore.open(started)
    store.create(n=40, m=20, k=2, panel_rows=40, dtype=np.dtype("float64"))
    assert (started / STARTING).exists()
    (started / "zarr.json").unlink()  # as if killed before the group was written
    est = dnmf.NMF(2, out=started, **fit).fit(V)
    np.testing.assert_array_equal(est.components_, reference.components_)
    assert not (started / STARTING).exists() and (started / COMMITTED).exists()
    # the same buffers without the marker: not a dnmf run, refused, nothing touched
    foreign = tmp_path / "foreign"
    RunStore.open(foreign).create(n=40, m=20, k=2, panel_rows=40, dtype=np.dtype("float64"))
    (foreign / STARTING).unlink()
    (foreign / "zarr.json").unlink()
    with pytest.raises(IncompatibleRunError, match="not a dnmf run"):
        dnmf.NMF(2, out=foreign, **fit).fit(V)
    assert (foreign / "W0").exists()
    # a committed run whose manifest is gone: damage, refused
    (started / MANIFEST).unlink()
    with pytest.raises(CorruptCheckpointError, match=r"manifest .* is missing"):
        dnmf.NMF(2, out=started, **fit).fit(V)


# ------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "elbow"}, "method must be one of"),
        ({"method": "cv", "rule": "stability"}, "rule='stability' is not a rule of method='cv'"),
        ({"ks": 5}, "ks must be an iterable"),
        ({"ks": []}, "ks is empty"),
        ({"ks": [2, 2]}, "ks holds a rank twice"),
        ({"ks": [0, 2]}, "ks must hold integers >= 1"),
        ({"ks": [1, 2], "method": "consensus"}, "integers >= 2"),
        ({"ks": [2.5]}, "integers >= 1"),
        ({"n_replicates": 0}, "n_replicates must be an integer >= 1"),
        ({"n_replicates": 1, "method": "consensus"}, "n_replicates must be an integer >= 2"),
        ({"fraction": 1.5}, "fraction must be a number between 0 and 1"),
        ({"fraction": 0}, "fraction must be"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"n_concurrent": 0}, "n_concurrent must be"),
        ({"stability_threshold": 2}, "stability_threshold"),
        ({"n_components": 3}, "select_rank sets 'n_components' itself"),
        ({"random_state": 3}, "seed= sets every fit's random_state"),
        ({"callback": print}, "sets 'callback' itself"),
        ({"solvr": "mu"}, "unknown parameter 'solvr'"),
        ({"solver": "lbfgs"}, "The 'solver' parameter of NMF must be"),
        ({"init": "custom"}, "init='custom' cannot be used"),
        ({"method": "consensus", "init": "nndsvda"}, "starts every replicate alike"),
    ],
)
def test_bad_arguments_are_one_clear_error(kwargs, match):
    V = np.random.default_rng(0).random((20, 10))
    kwargs = {"ks": [2, 3], **kwargs}
    ks = kwargs.pop("ks")
    with pytest.raises(InvalidParameterError, match=match):
        dnmf.select_rank(V, ks, **kwargs)


def test_bad_data_is_the_estimators_error():
    with pytest.raises(ValueError, match=r"[Nn]egative"):
        dnmf.select_rank(-np.ones((10, 5)), [2], method="consensus", n_replicates=2)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    V, _, _ = planted_rank(50, 20, 2, seed=8)
    res = dnmf.select_rank(V, [2, 3], method="consensus", n_replicates=2, max_iter=20)
    path = tmp_path / "rank.png"
    fig = res.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.axes[0].get_xlabel().startswith("k")
    assert repr(res).startswith("RankSelection(k=")


# ------------------------------------------------------------ the full grid
@pytest.mark.heavy
@pytest.mark.parametrize("k_star", [4, 8, 12])
@pytest.mark.parametrize(("kind", "loss"), [("dense", "frobenius"), ("sparse", "frobenius"),
                                            ("dense", "kl"), ("sparse", "kl")])
def test_consensus_full_grid(k_star, kind, loss):
    V, _, _ = planted_rank(300, 150, k_star, seed=k_star, kind=kind, loss=loss)
    res = dnmf.select_rank(V, range(2, 21), method="consensus", n_replicates=4,
                           max_iter=300, tol=1e-5, **_loss_params(loss))
    assert res.k == k_star, res.summary.to_string()

@pytest.mark.heavy
@pytest.mark.parametrize("k_star", [4, 8, 12])
@pytest.mark.parametrize(("kind", "loss"), [("dense", "frobenius"), ("sparse", "frobenius"),
                                            ("dense", "kl"), ("sparse", "kl")])
def test_cv_full_grid(k_star, kind, loss):
    V, _, _ = planted_rank(300, 150, k_star, seed=k_star, kind=kind, loss=loss)
    res = dnmf.select_rank(V, range(2, 21), method="cv", n_replicates=3,
                           max_iter=300, tol=1e-5, **_loss_params(loss))
    assert res.k == k_star, res.summary.to_string()


# ------------------------------------------------------- the shared panel cache
def _zarr(path, V, rows):
    import zarr

    z = zarr.create_array(str(path), shape=V.shape, chunks=(rows, V.shape[1]),
                          dtype=V.dtype)
    z[:] = V
    return z


def _fits(out, rows):
    from dnmf._runs import open_run

    runs = [open_run(os.path.join(out, "fits", f"k{r['k']:03d}-r{r['replicate']:02d}"))
            for r in rows]
    return [(np.asarray(run.W.compute()), np.asarray(run.H)) for run in runs]


def test_shared_panel_cache_same_table_same_bytes_and_its_budget(tmp_path):
    V, _, _ = planted_rank(400, 40, 3, seed=11)
    path = _zarr(tmp_path / "V.zarr", V, 50).store.root
    panel = 50 * 40 * 8
    kw = dict(method="cv", n_replicates=2, max_iter=8, tol=0.0, panel_rows=50)
    plain = dnmf.select_rank(str(path), [2, 3], panel_cache=0, out=tmp_path / "plain", **kw)
    shared = dnmf.select_rank(str(path), [2, 3], out=tmp_path / "shared", **kw)
    small = dnmf.select_rank(str(path), [2, 3], panel_cache=3 * panel + 1, **kw)
    assert plain.panel_cache is None
    assert _comparable(shared.rows) == _comparable(plain.rows) == _comparable(small.rows)
    for (W0, H0), (W1, H1) in zip(_fits(tmp_path / "plain", plain.rows),
                                  _fits(tmp_path / "shared", shared.rows)):
        np.testing.assert_array_equal(W1, W0)
        np.testing.assert_array_equal(H1, H0)
    # "auto": all 8 panels kept; each decoded once for the 4 fits' scans and passes
    assert shared.panel_cache["kept"] == 8 and shared.panel_cache["reads"] == 8
    assert shared.panel_cache["peak"] == 8 * panel
    # a budget of 3 panels: 3 kept, never more bytes than the budget, the rest re-read
    assert small.panel_cache["kept"] == 3
    assert small.panel_cache["peak"] == 3 * panel <= small.panel_cache["budget"]
    assert 8 < small.panel_cache["reads"]
    assert small.panel_cache["hits"] >= 3 * 4 * 8  # every fit's reads of the 3 kept


def test_shared_panel_cache_with_nan_a_zarr_mask_and_csr_zarr(tmp_path):
    V, _, _ = planted_rank(300, 30, 3, seed=12)
    rng = np.random.default_rng(0)
    V[rng.random(V.shape) < 0.05] = np.nan
    mask = rng.random(V.shape) >= 0.05
    v = _zarr(tmp_path / "V.zarr", V, 60)
    m = _zarr(tmp_path / "M.zarr", mask, 60)
    kw = dict(method="cv", n_replicates=2, max_iter=6, tol=0.0, missing="nan", mask=m,
              panel_rows=60)
    plain = dnmf.select_rank(v, [2, 3], panel_cache=0, **kw)
    shared = dnmf.select_rank(v, [2, 3], **kw)
    assert _comparable(shared.rows) == _comparable(plain.rows)
    # V's 5 panels and the mask's 5, each read once
    assert shared.panel_cache["reads"] == 10 and shared.panel_cache["kept"] == 10
    # sparse V stored as a CSR Zarr group, KL: consensus factors bit for bit
    S, _, _ = planted_rank(300, 40, 3, seed=13, kind="sparse", loss="kl")
    dnmf.io.write_csr_zarr(S, tmp_path / "S.zarr", chunk_nnz=500)
    kw = dict(method="consensus", n_replicates=2, max_iter=6, tol=0.0, panel_rows=100,
              solver="mu", beta_loss="kullback-leibler")
    plain = dnmf.select_rank(str(tmp_path / "S.zarr"), [2, 3], panel_cache=None, **kw)
    shared = dnmf.select_rank(str(tmp_path / "S.zarr"), [2, 3], **kw)
    assert _comparable(shared.rows) == _comparable(plain.rows)
    np.testing.assert_array_equal(shared.consensus_H, plain.consensus_H)
    assert shared.panel_cache["reads"] == 3


def test_panel_cache_waits_for_a_read_in_flight_and_keeps_nothing_over_budget():
    import threading

    from dnmf._panelcache import PanelCache

    cache = PanelCache(100)
    started, release, calls = threading.Event(), threading.Event(), []

    def read():
        calls.append(1)
        started.set()
        release.wait(5)
        return np.zeros(50)  # 400 bytes: over the budget, not kept

    got = []
    first = threading.Thread(target=lambda: got.append(cache.get("p", read)))
    first.start()
    started.wait(5)
    second = threading.Thread(target=lambda: got.append(cache.get("p", read)))
    second.start()
    time.sleep(0.05)
    release.set()
    first.join(5)
    second.join(5)
    assert len(calls) == 1 and got[0] is got[1]  # one read served both
    assert not got[0].flags.writeable
    assert cache.stats()["kept"] == 0 and cache.stats()["peak"] == 0
    cache.get("p", lambda: np.zeros(50))
    assert cache.stats()["reads"] == 2  # not kept: read again


def test_panel_cache_bad_value_is_one_clear_error():
    with pytest.raises(InvalidParameterError, match="panel_cache must be 'auto', a number"):
        dnmf.select_rank(np.ones((10, 5)), [2], panel_cache="lots")


@pytest.mark.slow
def test_cluster_sweep_reads_on_the_workers_and_matches_the_local_one(tmp_path,
                                                                      distributed_client):
    V, _, _ = planted_rank(200, 30, 3, seed=14)
    v = _zarr(tmp_path / "V.zarr", V, 50)
    kw = dict(method="cv", n_replicates=2, max_iter=5, tol=0.0, panel_rows=50)
    local = dnmf.select_rank(v, [2, 3], **kw)
    cluster = dnmf.select_rank(v, [2, 3], scheduler=distributed_client, **kw)
    assert local.panel_cache is not None and cluster.panel_cache is None
    for a, b in zip(_comparable(local.rows), _comparable(cluster.rows)):
        assert (a["k"], a["replicate"], a["iterations"]) == (b["k"], b["replicate"],
                                                             b["iterations"])
        np.testing.assert_allclose(b["test_error"], a["test_error"], rtol=1e-10)
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-10)
