"""Zarr stores at fsspec URLs (``s3://``, ``gs://``, ``https://``, ...).

Opening a remote store is the one place where a wrong endpoint or missing
credentials surface; they are reported as one :class:`~dnmf.errors.StoreError`
naming the URL, and a store that cannot be reached fails fast rather than after
fsspec's retries.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInputError, StoreError

__all__ = ["open_remote"]


def open_remote(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    import zarr

    try:
        return zarr.open(store=url, mode="r", storage_options=storage_options or None)
    except ImportError as exc:
        raise StoreError(
            f"reading {url} needs the fsspec implementation for its scheme ({exc}); for "
            f"s3:// install s3fs: pip install 'dnmf[s3]'."
        ) from None
    except FileNotFoundError:
        raise InvalidInputError(f"no Zarr array or group at {url}.") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {url}: {exc}") from None
