"""Fan-out of independent work items: in this process, or as Ray tasks on a cluster (`--ray auto|local|ADDRESS`).

`map_tasks(fn, items, ray_address)` applies `fn` to every item and returns one `Outcome` per item, in the
order of `items`, whatever order the work finishes in. Without an address the items run one after the other in
this process; with one, each item is a Ray task (one CPU, one torch/BLAS thread) on the cluster at that address.
`fn` must be a picklable callable (a module-level function or a `functools.partial` of one); it is put in the
object store once, the items travel with their tasks. A failing item never stops the others: its exception
becomes the item's `Outcome.error` (one line; `user_error` when it was bad input), and so does a task that Ray
lost (a worker that died, a node that left). Results do not depend on where or in which order items run, so
long as `fn` takes its seeds from the item (never from a shared generator): callers keep them per item.

Ray is imported here only, and only when an address is given: the daemon and the in-process path never need it.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fleetpilot.policies.errors import CliError, UserError

#: seconds to wait for a TCP connection to the given address before calling it unreachable
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Outcome:
    """The result of one item: `value` when it ran, else `error` (one line) and, for an unexpected failure,
    `detail` (the traceback)."""

    value: Any = None
    error: str | None = None
    user_error: bool = False
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def run_item(fn: Callable[[Any], Any], item: Any) -> Outcome:
    """Apply `fn` to `item` with one torch thread, turning an exception into an error outcome. This is the body
    of every task, in this process and on Ray alike."""
    restore = _single_thread()
    try:
        return Outcome(value=fn(item))
    except UserError as exc:
        return Outcome(error=_one_line(exc), user_error=True)
    except Exception as exc:  # a failure of one item must not stop the others
        return Outcome(error=f"{type(exc).__name__}: {_one_line(exc)}", detail=traceback.format_exc())
    finally:
        restore()


def map_tasks(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    ray_address: str | None = None,
    on_done: Callable[[int, Outcome], None] | None = None,
) -> list[Outcome]:
    """`fn` applied to each item, in the items' order; in this process without `ray_address`, else as Ray tasks.
    `on_done(index, outcome)` is called as each item finishes (in completion order)."""
    if ray_address is None:
        out = []
        for i, item in enumerate(items):
            o = run_item(fn, item)
            if on_done:
                on_done(i, o)
            out.append(o)
        return out
    ray = connect(ray_address)
    # one retry: a task whose node or worker was lost runs again elsewhere; an item that kills its worker twice
    # comes back as that item's error
    task = ray.remote(num_cpus=1, max_retries=1)(run_item)
    fn_ref = ray.put(fn)
    refs = [task.remote(fn_ref, item) for item in items]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Outcome | None] = [None] * len(refs)
    pending = list(refs)
    while pending:
        try:
            done, pending = ray.wait(pending, num_returns=1)
        except KeyboardInterrupt:  # Ctrl-C stops the work on the cluster too
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        for ref in done:
            i = index[ref]
            try:
                o = ray.get(ref)
            except Exception as exc:  # RayTaskError, WorkerCrashedError, ObjectLostError, ...
                o = Outcome(error=f"the Ray task failed: {type(exc).__name__}: {_one_line(exc)}", detail=str(exc))
            results[i] = o
            if on_done:
                on_done(i, o)
    return [o if o is not None else Outcome(error="no result") for o in results]


def first_error(outcomes: Sequence[Outcome]) -> Outcome | None:
    return next((o for o in outcomes if not o.ok), None)


def values(outcomes: Sequence[Outcome], what: str) -> list[Any]:
    """The values of outcomes that must all have run; the first failure raised (a UserError as itself)."""
    bad = first_error(outcomes)
    if bad is not None:
        if bad.user_error:
            raise CliError(bad.error or "")
        raise RuntimeError(f"{what}: {bad.error}\n{bad.detail or ''}")
    return [o.value for o in outcomes]


def connect(address: str):
    """The `ray` module, initialized and connected to `address` ('auto', 'local', HOST:PORT or ray://HOST:PORT).
    An address that cannot be reached is a CliError naming it (one line), never a hang or a traceback."""
    try:
        import ray
    except ImportError:
        raise CliError(
            f"--ray {address}: the ray package is not installed: pip install 'fleetpilot[distributed]'"
        ) from None
    if address not in ("auto", "local"):
        _check_reachable(address)
    if ray.is_initialized():
        current = _current_address(ray)
        if address == "auto" or address == current or (address == "local" and _connected_local):
            return ray
        ray.shutdown()
    # nothing of Ray's calls home, prints a banner or starts a dashboard on our behalf
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_PROMPT_ENABLED", "0")
    os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
    import logging

    common = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": True}
    if address == "local":
        _init(ray, address, include_dashboard=False, **common)
        _set_local(True)
        return ray
    _init(ray, address, address=address, **common)
    _set_local(False)
    return ray


_connected_local = False


def _set_local(flag: bool) -> None:
    global _connected_local
    _connected_local = flag


def _init(ray, shown: str, **kwargs) -> None:
    try:
        ray.init(**kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError (a malformed address) ...
        msg = _one_line(exc)
        if shown == "auto":
            msg = f"no running Ray cluster found ({msg}); start one with `ray start --head` or give its ADDRESS"
        raise CliError(f"--ray {shown}: cannot connect: {msg}") from None


def _check_reachable(address: str) -> None:
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError | socket.timeout):
            why = f"no answer within {CONNECT_TIMEOUT_S:g} s"
        raise CliError(f"--ray {address}: cannot reach a Ray cluster there ({why})") from None


def _host_port(address: str) -> tuple[str, int]:
    url = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = url.hostname, url.port
    except ValueError:
        host, port = None, None
    if url.scheme not in ("ray", "rays") or not host:
        raise CliError(f"--ray {address}: expected auto, local, HOST:PORT or ray://HOST:PORT")
    if port is None:
        port = 10001 if "://" in address else 6379
    return host, port


def _current_address(ray) -> str | None:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:
        return None


def _single_thread() -> Callable[[], None]:
    """One torch intra-op thread while an item runs (tasks share the node's cores); restored afterwards."""
    torch = sys.modules.get("torch")
    if torch is None:
        return lambda: None
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    return lambda: torch.set_num_threads(before)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
