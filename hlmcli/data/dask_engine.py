"""--engine dask: per-partition statistics on a dask.distributed cluster, combined by a tree reduction.

Each partition (a Parquet file or row group, a CSV block) is summarised by moments.chunk_moments,
the same function as the in-memory and streaming engines, keyed by unit id; the summaries are
merged a few at a time (moments.merge_keyed, Chan et al.'s update) up a tree, so a unit may have
records in any number of partitions and no worker ever holds more than a partition and a few
summaries. Only the reduced statistics (J × P² numbers) come back to the client, which runs the
optimisation, the certificate and the tables as the in-memory engine does.

Needs the optional extra: pip install '.[dask]' (in the source folder).
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import EXIT_USAGE, DataError, HlmError, install_hint
from ..engine.moments import KeyedMoments, chunk_moments, merge_keyed

FAN_IN = 8  # summaries merged per node of the reduction tree
CONNECT_TIMEOUT = 30.0  # seconds to reach a --scheduler and find a worker (--timeout)
CLOSE_TIMEOUT = 5.0  # seconds to say goodbye to a scheduler; a silent one must not hold the exit


class AddressError(HlmError):
    """A --scheduler value that is not an address: a usage error (exit 2), found before any connection."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Scheduler:
    """Where --engine dask runs: a scheduler's address (None: a LocalCluster), the seconds allowed to
    connect to it and find a worker (--timeout), and an optional limit on the whole computation (--deadline)."""

    address: str | None = None
    timeout: float = CONNECT_TIMEOUT
    deadline: float | None = None
    # when the command's computation began (the options were read): a fit of several passes (the HGLM's)
    # counts --deadline from here, so that the limit is on the whole computation
    started: float = field(default_factory=time.monotonic, compare=False)


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$")


def parse_address(text: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a scheduler address 'tcp://host:port', 'tls://host:port' or 'host:port'.
    Checked here, not by Dask: Dask takes garbage for a host name (and looks it up), and an http://
    address (the dashboard's) for a scheduler."""
    value = str(text)
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "tcp", value
    hint = "give the scheduler's address, e.g. tcp://host:8786"
    if scheme.lower() in ("http", "https"):
        raise AddressError(f"--scheduler {value}: an {scheme} address is a web page (the dashboard), not a Dask "
                           f"scheduler; {hint}")
    if scheme not in ("tcp", "tls"):
        raise AddressError(f"--scheduler {value}: unknown protocol '{scheme}://'; {hint} (or tls://host:port)")
    host, colon, port = rest.rpartition(":")
    if not colon or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"--scheduler {value}: not host:port with a port from 1 to 65535; {hint}")
    if not _HOST.match(host):
        raise AddressError(f"--scheduler {value}: '{host}' is not a host name or IP address; {hint}")
    return scheme, host.strip("[]"), int(port)


def check_seconds(option: str, value) -> float | None:
    """A finite positive number of seconds (or None): nan, inf, 0 and negatives are usage errors."""
    if value is None:
        return None
    if not (math.isfinite(value) and value > 0):
        raise AddressError(f"{option} {value}: give a positive, finite number of seconds")
    return float(value)


def _recv(sock, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def probe(address: str, timeout: float) -> None:
    """Refuse, in one line, an address where no Dask scheduler answers, without handing it to Dask.

    A Dask scheduler speaks first: on accepting a TCP connection it sends its handshake, one
    message framed as [8-byte total length][8-byte frame count][8-byte length per frame]... (little
    endian; about 60 bytes). Dask's own client writes first and then waits for that reply with no
    time limit, and reads an HTTP server's "HTTP/1.1 400" as a frame length of 3.5e18 bytes (the
    'out of memory' failure). So this probe only listens: silence for `timeout` seconds, a closed
    connection or bytes that are not such a frame each get one line. TLS endpoints speak only after
    their own handshake, so tls:// addresses are not probed (the guarded connect still bounds them)."""
    scheme, host, port = parse_address(address)
    if scheme != "tcp":
        return
    start = time.monotonic()
    where = f"--scheduler {address}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        raise DataError(f"{where}: nothing listens there (connection refused); start the scheduler "
                        "('dask scheduler') or check the host and port") from None
    except socket.gaierror as exc:
        raise DataError(f"{where}: unknown host '{host}' ({exc.strerror}); check the address") from None
    except TimeoutError:
        raise DataError(f"{where}: no connection within {timeout:g} s; check the address, the network and "
                        "any firewall (or raise --timeout)") from None
    except OSError as exc:
        raise DataError(f"{where}: cannot connect ({exc.strerror or exc}); check the address") from None
    with sock:
        sock.settimeout(max(timeout - (time.monotonic() - start), 1e-3))
        try:
            head = _recv(sock, 16)
        except TimeoutError:
            raise DataError(f"{where}: the address accepts connections but says nothing within {timeout:g} s, where a "
                            "Dask scheduler answers at once; it is another service (the dashboard is an http:// "
                            "port), or a stuck scheduler; give the scheduler's address or raise --timeout") from None
        except OSError as exc:
            raise DataError(f"{where}: the connection failed ({exc.strerror or exc}); check the address") from None
    total, frames = struct.unpack("<QQ", head) if len(head) == 16 else (0, 0)
    if not (1 <= frames <= 64 and 8 + 8 * frames <= total <= 1 << 20):
        seen = "closed the connection" if not head else f"sent {head[:8]!r}..."
        raise DataError(f"{where}: the address {seen}, which is not a Dask scheduler's greeting; give the "
                        "scheduler's address (e.g. tcp://host:8786)")


def _within(seconds: float, what: str, func):
    """func() in a daemon thread, abandoned after `seconds`: Dask's connect has steps with no time
    limit of their own, and a stuck one must not hold the command."""
    box: dict = {}

    def run():
        try:
            box["value"] = func()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=run, name="hlmcli-dask-connect", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise DataError(f"{what}: no answer within {seconds:g} s; check the address or raise --timeout")
    if "error" in box:
        raise box["error"]
    return box["value"]


def connect(where: Scheduler):
    """A Client of the scheduler at where.address (probed already) with one worker or more: opening
    it and finding a worker get where.timeout seconds each; every way of failing is one line."""
    from distributed import Client

    address = where.address
    name = f"--scheduler {address}"

    def open_client():
        return Client(address, timeout=where.timeout, set_as_default=False)

    try:
        client = _within(where.timeout, name, open_client)
    except HlmError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the far end did, it is not a usable scheduler
        raise DataError(f"{name}: no Dask scheduler answers there ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:160]}); check the address") from None
    try:
        _within(where.timeout + 1.0, name, lambda: client.wait_for_workers(1, timeout=where.timeout))
    except HlmError:
        _close(client)
        raise
    except Exception:  # noqa: BLE001 - distributed's TimeoutError, or the scheduler went away
        _close(client)
        raise DataError(f"{name}: the scheduler has no workers (none joined within {where.timeout:g} s); start "
                        f"workers with 'dask worker {address}' or raise --timeout") from None
    return client


def _close(client) -> None:
    try:
        _within(CLOSE_TIMEOUT, "closing the Dask client", lambda: client.close(timeout=CLOSE_TIMEOUT))
    except Exception:  # noqa: BLE001 - the results are in hand; a scheduler that will not say goodbye is not an error
        pass


def _dask():
    try:
        import dask  # noqa: F401
        import dask.dataframe  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        raise DataError(f"--engine dask needs Dask; {install_hint('dask')}") from None
    import dask.dataframe as dd

    return dd


def is_parquet(path: str) -> bool:
    p = str(path).rstrip("/")
    if os.path.isdir(p):
        return True
    return p.lower().endswith((".parquet", ".pq"))


def level1_files(path: str) -> list[str]:
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True)) or sorted(
            glob.glob(os.path.join(path, "**", "*"), recursive=True))
        found = [f for f in found if os.path.isfile(f)]
    else:
        found = sorted(glob.glob(path))
    if not found:
        raise DataError(f"{path}: no file matches; give a Parquet folder, a glob such as 'l1/*.parquet', or CSV files")
    return found


def unit_ids(pdf, id_name: str):
    """A partition's unit ids: integral floats as integers, text stripped; a missing id refused."""
    import pandas as pd

    ids = pdf[id_name]
    if ids.isna().any():
        raise DataError(f"column {id_name}: a unit id is missing; give every record an id")
    if pd.api.types.is_float_dtype(ids.dtype) and np.all(ids.to_numpy() == np.round(ids.to_numpy())):
        ids = ids.astype(np.int64)
    if not pd.api.types.is_numeric_dtype(ids.dtype):
        ids = ids.astype(str).str.strip()
    return ids


def partition_links(pdf, child: str, parent: str):
    """One partition's distinct (child id, parent id) pairs as text (streaming.id_text), in order of first
    appearance."""
    from .streaming import id_text

    pairs = {}
    for a, b in zip(id_text(unit_ids(pdf, child).to_numpy()), id_text(unit_ids(pdf, parent).to_numpy())):
        pairs.setdefault((a, b), None)
    return list(pairs)


def dask_id_links(path, child: str, parent: str, scheduler=None, delimiter=None) -> dict[str, list[str]]:
    """streaming.id_links over a Parquet dataset or CSV glob, on a cluster: each `child` id and the distinct
    `parent` ids of its records, in order of first appearance (partitions in order). One pass over the
    two id columns, before the moments' pass (a level-2 file without the level-3 id)."""
    from dask import delayed

    where = scheduler if isinstance(scheduler, Scheduler) else Scheduler(scheduler or None)
    started = time.monotonic()
    if where.address:
        _within(where.timeout + 1.0, f"--scheduler {where.address}", lambda: probe(where.address, where.timeout))
    dd = _dask()
    try:
        if is_parquet(str(path)):
            ddf = dd.read_parquet(level1_files(str(path)) if not os.path.isdir(str(path)) else str(path),
                                  columns=[child, parent])
        else:
            from ..io.readers import CSV_MISSING

            ddf = dd.read_csv(level1_files(str(path)), usecols=[child, parent], dtype={child: str, parent: str},
                              na_values=CSV_MISSING, keep_default_na=False, sep=delimiter or ",", blocksize="64MB")
        parts = [delayed(partition_links)(part, child, parent) for part in ddf.to_delayed()]
    except DataError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise _read_error(path, exc) from None
    links: dict[str, list[str]] = {}
    for a, b in (pair for part in _compute(delayed(list)(parts), where, started, path) for pair in part):
        found = links.setdefault(a, [])
        if b not in found:
            found.append(b)
    return links


def partition_moments(pdf, id_name: str, names: list[str]):
    """One partition's summary: (KeyedMoments with ids as sorted keys, records read, records deleted
    in each unit that had any: {key: count}).
    Integer ids stay integers until the end (sorting them is cheap); text ids are stripped."""
    import pandas as pd

    codes, uniq = pd.factorize(unit_ids(pdf, id_name).to_numpy(), sort=True)
    values = [pdf[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in names]
    keep = np.ones(len(pdf), dtype=bool)
    for c, v in zip(names, values):
        if np.isinf(v).any():
            raise DataError(f"column {c}: a value is infinite; fix it or leave {c} out of the model")
        keep &= ~np.isnan(v)
    keys = np.asarray(uniq)
    if keys.dtype == object:
        keys = keys.astype(str)
    deleted = {}
    if not keep.all():
        counts = np.bincount(codes[~keep], minlength=len(keys))
        deleted = {keys[k].item(): int(counts[k]) for k in np.flatnonzero(counts)}
        codes = codes[keep]
        values = [v[keep] for v in values]
    return KeyedMoments(keys, chunk_moments(values, codes, len(keys))), len(pdf), deleted


def combine(parts):
    """A node of the tree reduction."""
    deleted: dict = {}
    for p in parts:
        for key, count in p[2].items():
            deleted[key] = deleted.get(key, 0) + count
    return merge_keyed([p[0] for p in parts]), sum(p[1] for p in parts), deleted


def read_dataset(path: str, id_name: str, names: list[str], delimiter=None):
    dd = _dask()
    columns = list(dict.fromkeys([id_name] + names))
    if is_parquet(path):
        return dd.read_parquet(level1_files(path) if not os.path.isdir(path) else path, columns=columns)
    from ..io.readers import CSV_MISSING

    return dd.read_csv(level1_files(path), usecols=columns, dtype={id_name: str, **{c: "float64" for c in names}},
                       na_values=CSV_MISSING, keep_default_na=False, sep=delimiter or ",", blocksize="64MB")


def tree(summaries, fan_in: int = FAN_IN):
    """Merge the partitions' summaries fan_in at a time until one is left (Dask runs each level in parallel)."""
    from dask import delayed

    level = list(summaries)
    while True:
        level = [delayed(combine)(level[i:i + fan_in]) for i in range(0, len(level), fan_in)]
        if len(level) == 1:
            return level[0]


def _read_error(path, exc) -> DataError:
    text = " ".join(str(exc).split())
    text = text.split("Original Message: ")[-1][:240]
    return DataError(f"{path}: {text}; check the files (every column the model uses must hold numbers)")


def _open_client(where: Scheduler):
    """A Client of the scheduler at where.address, or of a LocalCluster of this machine started here;
    (client, the cluster to close or None)."""
    import logging

    from distributed import Client, LocalCluster

    if where.address:
        return connect(where), None
    # CRITICAL: a worker's log lines (a heartbeat that fails while a stopped run closes the
    # cluster) would break the one-line error; its real failures reach us through the future
    cluster = LocalCluster(n_workers=min(2, os.cpu_count() or 1), threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL)
    return Client(cluster), cluster


def _one_line(exc, where: Scheduler, path):
    """What went wrong in a Dask computation as a one-line DataError, or None when it is not foreseen."""
    import asyncio
    import concurrent.futures

    if isinstance(exc, ImportError):  # raised on a worker that has no hlmcli
        return DataError(f"--engine dask: a worker cannot import what it needs ({exc}); install "
                         "hlmcli with its dask extra on every worker (pip install '.[dask]' in its source folder)")
    if isinstance(exc, (OSError, ValueError, TypeError, KeyError)):  # unreadable file, a value that is not a number
        from distributed.comm import CommClosedError

        if isinstance(exc, CommClosedError):
            return DataError(f"--scheduler {where.address}: the connection to the scheduler was lost during the "
                             "computation; check the scheduler and rerun")
        return _read_error(path, exc)
    if isinstance(exc, (asyncio.CancelledError, concurrent.futures.CancelledError)):
        return DataError(f"--scheduler {where.address}: the scheduler cancelled the computation (it restarted, or "
                         "lost its workers); rerun")
    return None


def _compute(final, where: Scheduler, started: float, path, progress: bool = False):
    """`final` (a Dask delayed) computed on the scheduler, or on a LocalCluster of this machine started and
    closed here; its result, or a one-line DataError for what can go wrong on the way."""
    import asyncio
    import concurrent.futures
    import contextlib
    import sys

    client, cluster = _open_client(where)
    try:
        future = client.compute(final)
        if progress and where.deadline is None:  # the bar waits with no limit of its own
            from distributed import progress as bar

            with contextlib.redirect_stdout(sys.stderr):  # stdout carries the tables
                bar(future)
        left = None if where.deadline is None else max(where.deadline - (time.monotonic() - started), 1e-3)
        try:
            return future.result(timeout=left)
        except TimeoutError:
            raise _past_deadline(where) from None
    except DataError:
        raise
    except (ImportError, OSError, ValueError, TypeError, KeyError, asyncio.CancelledError,
            concurrent.futures.CancelledError) as exc:
        raise _one_line(exc, where, path) from None
    finally:
        _close(client)
        if cluster is not None:
            cluster.close()


def _past_deadline(where: Scheduler) -> DataError:
    return DataError(f"--deadline {where.deadline:g}: the Dask computation did not finish in time; raise "
                     "--deadline or add workers")


def compute_within(where: Scheduler, tasks: list, progress: bool = False) -> tuple:
    """dask.compute(*tasks) on the client of the current session(), within what is left of where.deadline
    (counted from where.started); past it, the tasks are cancelled and _compute's one line is raised. With
    `progress`, distributed's bar on stderr, as _compute shows it (not with a deadline: the bar waits
    with no limit of its own); the bar follows what the tasks depend on, so a pass over persisted
    partitions shows the reading too."""
    import asyncio
    import sys

    from distributed import get_client, wait

    client = get_client()
    futures = client.compute(list(tasks))
    if progress and where.deadline is None:
        from distributed import progress as bar

        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the tables
            bar(futures)
    if where.deadline is not None:
        left = max(where.deadline - (time.monotonic() - where.started), 1e-3)
        try:
            wait(futures, timeout=left)
        except (TimeoutError, asyncio.TimeoutError):
            client.cancel(futures)
            raise _past_deadline(where) from None
    return tuple(client.gather(futures))


@contextlib.contextmanager
def session(where: Scheduler, path):
    """A Client (of where.address, or of a LocalCluster started here) as the default scheduler of the
    computations inside the block, closed after it: for a fit that passes over persisted partitions
    many times. Failures on the way are one-line DataErrors, as _compute's."""
    if where.address:
        _within(where.timeout + 1.0, f"--scheduler {where.address}", lambda: probe(where.address, where.timeout))
    _dask()
    client, cluster = _open_client(where)
    try:
        with client.as_current():
            yield client
    except HlmError:
        raise
    except Exception as exc:  # noqa: BLE001 - only the foreseen failures become one line; the rest are bugs
        line = _one_line(exc, where, path)
        if line is None:
            raise
        raise line from None
    finally:
        _close(client)
        if cluster is not None:
            cluster.close()


def dask_moments(path, id_name: str, names: list[str], scheduler=None, progress: bool = False, delimiter=None,
                 by_unit: bool = False):
    """Per-unit moments of `names` over a Parquet dataset or CSV glob, on a cluster. `scheduler` is a
    Scheduler, an address, or None (a LocalCluster). Returns (unit ids as text, Moments, records read,
    records deleted), and with `by_unit` the number deleted in each unit that had any ({unit id: count})."""
    where = scheduler if isinstance(scheduler, Scheduler) else Scheduler(scheduler or None)
    started = time.monotonic()
    if where.address:  # before reading (or importing) anything: a wrong address is told at once
        _within(where.timeout + 1.0, f"--scheduler {where.address}",  # + 1: the probe's own limit fires first
                lambda: probe(where.address, where.timeout))
    from dask import delayed

    from .streaming import id_text

    try:
        ddf = read_dataset(str(path), id_name, names, delimiter)
        summaries = [delayed(partition_moments)(part, id_name, names) for part in ddf.to_delayed()]
    except DataError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as exc:  # Dask reads a sample to learn the columns' types
        raise _read_error(path, exc) from None
    keyed, read, deleted = _compute(tree(summaries), where, started, path, progress)
    total = sum(deleted.values())
    if not by_unit:
        return id_text(keyed.keys), keyed.moments, read, total
    keys = list(deleted)
    return id_text(keyed.keys), keyed.moments, read, total, dict(zip(id_text(keys), deleted.values()))
