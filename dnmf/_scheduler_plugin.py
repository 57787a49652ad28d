"""A scheduler plugin that keeps loose placement loose when every worker is gone.

dnmf places panel tasks with ``dask.annotate(workers=[w], allow_other_workers=True)``:
a preference, which Dask's scheduler honours while some worker runs. But when every
worker is gone at once, the tasks waiting then go to the scheduler's "no-worker"
set, and a worker that joins later is offered only the tasks whose restrictions it
satisfies (distributed 2026.8, ``bulk_schedule_unrunnable_after_adding_worker``
ignores ``loose_restrictions``): a task preferring a dead worker then waits forever
while fresh workers sit idle. This plugin drops, when a worker joins, the worker
restrictions of loose waiting tasks whose preferred workers are all gone, so they
run on the new ones (with the same result: placement never changes what a task
computes).

This module is sent to the scheduler by value (cloudpickle), so the scheduler
needs no dnmf installed; it imports only distributed.
"""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

NAME = "dnmf-loose-placement"


class LoosePlacement(SchedulerPlugin):
    """Frees loose tasks stuck on departed workers when a worker joins."""

    name = NAME
    idempotent = True

    def add_worker(self, scheduler: Any = None, worker: str | None = None) -> None:
        for ts in list(getattr(scheduler, "unrunnable", ())):
            wanted = ts.worker_restrictions
            if ts.loose_restrictions and wanted and not any(
                    address in scheduler.workers for address in wanted):
                ts.worker_restrictions = None


def install(client: Any) -> None:
    """Register the plugin on ``client``'s scheduler (once per scheduler: idempotent)."""
    import sys

    import cloudpickle

    module = sys.modules[__name__]
    if module.__name__ not in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.register_pickle_by_value(module)
    client.register_plugin(LoosePlacement(), name=NAME)
