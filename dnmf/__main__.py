"""``python -m dnmf``: the same command line as the ``dnmf`` entry point."""

from __future__ import annotations

from ._entry import main

if __name__ == "__main__":
    main()
