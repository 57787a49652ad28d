#!/bin/sh
# Thin wrapper around start_cluster.py (same arguments):
#   cluster/local/start_cluster.sh start --dir /tmp/dnmf-cluster --workers 2 --threads-per-worker 1
#   cluster/local/start_cluster.sh status --dir /tmp/dnmf-cluster
#   cluster/local/start_cluster.sh stop --dir /tmp/dnmf-cluster
# Uses $PYTHON if set, else python3 (the interpreter must have dnmf/dask installed:
# the scheduler and workers run with the same interpreter).
set -eu
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
exec "${PYTHON:-python3}" "$here/start_cluster.py" "$@"
