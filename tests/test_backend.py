"""Scheduling: fixed reduction order, graph size per pass, BLAS thread limits."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dnmf import _backend, _tree
from dnmf._backend import Backend


def _task(x, scale):
    return x * scale, np.array([x.sum()])


def _add(a, b):
    return a + b


def test_reduction_is_a_fixed_tree_in_panel_order():
    # Floating-point addition is not associative: a fixed tree gives one answer,
    # whatever order the tasks finish in.
    values = [np.array([v]) for v in (1e16, 1.0, -1e16, 1.0, 3.0)]
    backend = Backend(n_threads=2)
    for _ in range(20):
        _, total = backend.run_pass(
            lambda v: (None, v), [(v,) for v in values], (), _add, keep_outputs=False
        )
        # ((1e16 + 1) + (-1e16 + 1)) + 3 in float64
        expected = ((values[0] + values[1]) + (values[2] + values[3])) + values[4]
        np.testing.assert_array_equal(total, expected)


def test_outputs_come_back_in_panel_order():
    backend = Backend(n_threads=2)
    panels = [np.full(3, i, dtype=float) for i in range(7)]
    outputs, total = backend.run_pass(_task, [(p,) for p in panels], (2.0,), _add,
                                      keep_outputs=True)
    for i, out in enumerate(outputs):
        np.testing.assert_array_equal(out, np.full(3, 2.0 * i))
    assert float(total[0]) == sum(3.0 * i for i in range(7))


def test_graph_size_is_linear_in_panels_and_constant_across_passes(monkeypatch):
    sizes = []
    real_get = _backend.dask.threaded.get

    def counting_get(dsk, keys, **kwargs):
        sizes.append(len(dsk))
        return real_get(dsk, keys, **kwargs)

    monkeypatch.setattr(_backend.dask.threaded, "get", counting_get)
    backend = Backend(n_threads=2)
    for n_panels in (4, 8, 16):
        for _ in range(3):
            backend.run_pass(_task, [(np.ones(2),)] * n_panels, (1.0,), _add,
                             keep_outputs=True)
    per_size = [sizes[i:i + 3] for i in range(0, 9, 3)]
    for group in per_size:
        assert len(set(group)) == 1  # passes do not grow
    assert per_size[2][0] <= 2 * per_size[1][0] + 4 <= 4 * per_size[0][0] + 12


def _blas_threads(_x):
    from threadpoolctl import threadpool_info

    counts = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    return None, np.array([max(counts) if counts else 0])


def _max(a, b):
    return np.maximum(a, b)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to oversubscribe")
def test_blas_threads_times_dask_threads_do_not_exceed_cores():
    cores = os.cpu_count() or 1
    backend = Backend(n_threads=cores)
    _, seen = backend.run_pass(_blas_threads, [(i,) for i in range(4)], (), _max,
                               keep_outputs=False)
    assert 0 < int(seen[0]) * cores <= cores


def test_cluster_panels_sit_in_contiguous_blocks_per_worker(distributed_client):
    """Neighbouring panels share a worker, so the fixed tree adds mostly locally."""
    backend = Backend(distributed_client)
    workers = sorted(distributed_client.scheduler_info()["workers"])
    assert backend.placement(8) == [workers[0]] * 4 + [workers[1]] * 4
    assert backend.placement(3) == [workers[0], workers[0], workers[1]]
    panels = [np.full((2, 2), float(i)) for i in range(8)]
    futures = backend.map_keep(np.negative, [(p,) for p in panels])
    distributed_client.gather(futures)  # wait for them
    where = distributed_client.who_has(futures)
    assert [next(iter(where[f.key])) for f in futures] == backend.placement(8)
    outputs, total = backend.run_pass(
        lambda f: (f, f.sum()), [(f,) for f in futures], (), np.add, keep_outputs=True
    )
    assert total == -sum(range(8)) * 4
    # The outputs of each worker's block of panels stay on that worker, in one task.
    blocks = [o.future for o in outputs]
    assert len({b.key for b in blocks}) == 2
    distributed_client.gather(blocks)
    where = distributed_client.who_has(blocks)
    assert [next(iter(where[b.key])) for b in blocks] == backend.placement(8)
    for panel, got in zip(panels, backend.gather(outputs)):
        np.testing.assert_array_equal(got, -panel)


def _negate_and_sum(f):
    return -f, f.sum()


def test_a_cluster_pass_is_one_task_per_worker_thread(distributed_client):
    """A worker thread's panels run in turn in one task: no round trip between them."""
    from distributed import get_task_stream

    backend = Backend(distributed_client)
    panels = [np.full((2, 2), float(i)) for i in range(8)]
    with get_task_stream(distributed_client) as ts:
        outputs, total = backend.run_pass(_negate_and_sum, [(p,) for p in panels], (),
                                          np.add, keep_outputs=True)
    assert total == sum(range(8)) * 4
    keys = [str(t["key"]) for t in ts.data]
    assert sum(k.startswith("_negate_and_sum") for k in keys) == 2, keys
    for panel, got in zip(panels, backend.gather(outputs)):
        np.testing.assert_array_equal(got, -panel)


def _join(a: str, b: str) -> str:
    return f"({a}+{b})"


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 11, 16, 17])
@pytest.mark.parametrize("layout", ["one", "contiguous", "scattered"])
def test_block_sums_then_upper_tree_are_the_fixed_tree_exactly(n, layout):
    """Summing each worker's block in one task, then the tree above, is the same tree.

    A join that writes out its brackets shows the order of every addition.
    """
    rng = np.random.default_rng(n)
    owners = {
        "one": [0] * n,
        "contiguous": sorted(rng.integers(0, 3, n).tolist()),
        "scattered": rng.integers(0, 3, n).tolist(),
    }[layout]
    leaves = [str(i) for i in range(n)]
    blocks = _tree.local_blocks(owners)
    assert [a for a, _ in blocks] == [0] + [b for _, b in blocks[:-1]]  # a cover, in order
    assert blocks[-1][1] == n
    for a, b in blocks:
        assert len(set(owners[a:b])) == 1
        assert (b - a) & (b - a - 1) == 0 or b == n  # an aligned subtree
        assert a % (1 << (b - a - 1).bit_length()) == 0
    sums = [_tree.pairwise_tree(leaves[a:b], _join) for a, b in blocks]
    assert _tree.upper_tree(blocks, sums, _join) == _tree.pairwise_tree(leaves, _join)
    if layout == "one":
        assert blocks == [(0, n)]


def test_the_dashboard_link_says_how_to_get_it_served(monkeypatch):
    pytest.importorskip("bokeh")
    link = "http://127.0.0.1:8787/status"
    assert _backend.describe_dashboard(link) == link
    monkeypatch.setitem(__import__("sys").modules, "bokeh", None)  # as if not installed
    text = _backend.describe_dashboard(link)
    assert text.startswith(link) and "needs bokeh" in text and "dnmf[dashboard]" in text


def _slow_task(x, delay, after=None):
    import time

    time.sleep(delay)
    return x + 1.0, x.copy()


def _then(total, *shared):
    return (total,), total


def test_a_queued_pass_waits_for_the_result_of_the_one_before_it(distributed_client):
    """A pass queued behind another must not delay the first one's result.

    Each pass's tiny last task (taking the result to the client) runs on a worker
    the queued pass's panel tasks want too; it must go first, or the client sees
    each result one whole pass late.
    """
    import time

    delay = 0.3
    backend = Backend(distributed_client)
    panels = backend.scatter_panels([np.full(2, float(i)) for i in range(4)])
    t0 = time.monotonic()
    first = backend.submit_pass(_slow_task, [(p,) for p in panels], (delay,), _add,
                                keep_outputs=True, then=_then)
    # The second pass hangs on the first one's ``then``, as a fit's next pass does.
    second = backend.submit_pass(_slow_task, [(o,) for o in first.outputs],
                                 (delay, first.part(0)), _add, keep_outputs=True, then=_then)
    np.testing.assert_array_equal(first.result(), sum(np.full(2, float(i)) for i in range(4)))
    first_at = time.monotonic() - t0
    np.testing.assert_array_equal(second.result(), first.result() + 4.0)
    second_at = time.monotonic() - t0
    # Two panels of `delay` seconds per worker per pass: the first result arrives after
    # about 2·delay, the second about 2·delay later (not both at the end).
    assert second_at - first_at > 1.2 * delay, (first_at, second_at)
