"""Zarr stores at fsspec URLs (``s3://``, ``gs://``, ``https://``, ...): options, and
failing fast and clearly when the object store cannot be reached.

fsspec options reach a store in two ways: ``storage_options=`` where dnmf opens it
(:func:`dnmf.open_source`), or process-wide defaults per protocol
(:func:`set_storage_options`, which the command line's ``--storage-option KEY=VALUE``
uses), which fsspec applies to every file system it creates afterwards — the run
store included. Before a store is opened, an endpoint given as a URL (``endpoint_url``,
``AWS_ENDPOINT_URL``) gets one TCP probe, so an unreachable endpoint is one
:class:`~dnmf.errors.StoreError` in seconds instead of retries with backoff.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidInputError, InvalidParameterError, StoreError

__all__ = ["check_reachable", "open_remote", "parse_storage_option", "public_options",
           "remote_options", "set_storage_options"]

#: Seconds the probe of an endpoint waits for a TCP connection.
PROBE_TIMEOUT = 3.0

#: dnmf's defaults under every ``s3://`` store it opens (input, run store, workers'
#: reads): a connection that does not open in 5 s is an error, and a failed request is
#: tried twice in all (botocore's "standard" retry mode), instead of botocore's legacy
#: 5 attempts with backoff (~15 s per request, ~65 s under load before one error line).
#: Options given by the user (``storage_options=``, ``--storage-option``,
#: :func:`set_storage_options`) win key by key; ``AWS_MAX_ATTEMPTS`` /
#: ``AWS_RETRY_MODE`` in the environment replace the retry default.
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {"connect_timeout": 5,
                      "retries": {"max_attempts": 2, "mode": "standard"}},
}

#: Option names that hold secrets: never recorded in a run (matched case-insensitively
#: against every key, nested ones included).
_SECRET = re.compile(r"secret|password|passwd|token|credential|private|session|"
                     r"(^|_)key($|_)|access_key|account_key|sas|signature", re.IGNORECASE)


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def set_storage_options(protocol: str, **options: Any) -> None:
    """Default fsspec options for every ``protocol://`` store opened from now on, in
    this process (e.g. ``set_storage_options("s3", endpoint_url=..., key=..., secret=...)``).
    Workers of a cluster are other processes: give them the same through environment
    variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ... or ``FSSPEC_S3_...``)."""
    import fsspec.config

    fsspec.config.conf.setdefault(protocol, {}).update(options)


def parse_storage_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line: VALUE as JSON when it parses (numbers,
    true/false, objects), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InvalidParameterError(
            f"--storage-option takes KEY=VALUE (e.g. endpoint_url=http://127.0.0.1:9000), "
            f"got {text!r}."
        )
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def _merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Dicts merged key by key (nested dicts too); later layers win."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = _merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def _defaults(protocol: str) -> dict[str, Any]:
    if protocol not in ("s3", "s3a"):
        return {}
    defaults = copy.deepcopy(S3_DEFAULTS)
    if os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE"):
        del defaults["config_kwargs"]["retries"]
    return defaults


def remote_options(url: str, storage_options: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The fsspec options dnmf opens ``url`` with: its defaults (:data:`S3_DEFAULTS`),
    then the process-wide ones for the protocol, then ``storage_options``."""
    import fsspec.config

    protocol = protocol_of(url)
    return _merge(_defaults(protocol), fsspec.config.conf.get(protocol, {}),
                  storage_options or {})


def public_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` without secrets (keys, tokens, passwords, sessions) and without values
    JSON cannot hold: what a run records of the options its data was opened with."""
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if _SECRET.search(str(key)):
            continue
        if isinstance(value, dict):
            value = public_options(value)
            if not value:
                continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[str(key)] = value
    return out


def recorded_options(url: str | None, storage_options: dict[str, Any] | None = None
                     ) -> dict[str, Any] | None:
    """What a run records for a source at ``url``: the non-secret options given for it
    (explicitly or as process-wide defaults), None for a local path or no options."""
    if not url or "://" not in url or protocol_of(url) == "file":
        return None
    import fsspec.config

    given = _merge(fsspec.config.conf.get(protocol_of(url), {}), storage_options or {})
    public = public_options(given)
    return public or None


def reopen_options(url: str, recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """The options to reopen a recorded source with: what the run recorded, under what
    is given now (``--storage-option``, :func:`set_storage_options`) — secrets come
    from there or from the environment."""
    if not recorded:
        return None
    import fsspec.config

    return _merge(recorded, fsspec.config.conf.get(protocol_of(url), {}))


def _endpoint(url: str, storage_options: dict[str, Any] | None) -> str | None:
    """The endpoint URL a store at ``url`` would talk to, when one is configured."""
    import fsspec.config

    protocol = protocol_of(url)
    options = {**fsspec.config.conf.get(protocol, {}), **(storage_options or {})}
    endpoint = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get(
        "endpoint_url")
    if endpoint is None and protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint is None and protocol in ("http", "https"):
        endpoint = url
    return str(endpoint) if endpoint else None


def check_reachable(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse at once, with one clear error, a store whose endpoint does not answer."""
    endpoint = _endpoint(url, storage_options)
    if endpoint is None:
        return
    parts = urlsplit(endpoint)
    host = parts.hostname
    if not host:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise StoreError(
            f"cannot reach the object store at {endpoint} for {url}: {reason}. Check the "
            f"endpoint (storage_options={{'endpoint_url': ...}}, --storage-option "
            f"endpoint_url=..., or AWS_ENDPOINT_URL) and that the server is running."
        ) from None


def open_remote(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The Zarr array or group at ``url``, or one clear error."""
    import zarr

    check_reachable(url, storage_options)
    try:
        return zarr.open(store=url, mode="r",
                         storage_options=remote_options(url, storage_options) or None)
    except ImportError as exc:
        raise StoreError(
            f"reading {url} needs the fsspec implementation for its scheme ({exc}); for "
            f"s3:// install s3fs: pip install 'dnmf[s3]'."
        ) from None
    except FileNotFoundError:
        raise InvalidInputError(f"no Zarr array or group at {url}.") from None
    except PermissionError as exc:
        raise StoreError(f"access to {url} was refused: {exc}. Check the credentials.") \
            from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {url}: {exc}") from None
