"""Reading files a user hands to fleetpilot (configs, traces, model manifests, secret files) without hanging or
flooding: only regular files are read (a FIFO would block forever, `/dev/zero` never ends), never more than a
limit, and YAML mappings with a duplicate key are refused (the last one would silently win).

Shared by the daemon and the training tools, so it lives here (both import `policies`, neither the other).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import IO, Any

from fleetpilot.policies.errors import UserError

#: Limits of what is read (bytes). A config or a manifest is a few KB; a year of per-minute trace is ~16 MB.
MAX_CONFIG_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 4 << 20
MAX_SECRET_BYTES = 64 << 10
MAX_TRACE_BYTES = 512 << 20
MAX_MODEL_BYTES = 1 << 30


class FileReadError(UserError):
    """A file that must not be read: not a regular file, or larger than its limit. The message says which
    (without the path: callers prefix their own `file:` or field name)."""


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} bytes"


def open_regular(path: str | Path, max_bytes: int) -> IO[bytes]:
    """Open a regular file for reading in binary, refusing anything else and anything over `max_bytes`.

    Opened with O_NONBLOCK so that a FIFO does not block the open itself; the type is then checked on the
    open descriptor (no race with a swapped path). Raises FileReadError, or OSError (no such file, ...)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a directory"
                if stat.S_ISDIR(st.st_mode)
                else "a FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "a device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket"
                if stat.S_ISSOCK(st.st_mode)
                else "not a file"
            )
            raise FileReadError(f"not a regular file ({kind}); only regular files are read")
        if st.st_size > max_bytes:
            raise FileReadError(f"too large: {_size(st.st_size)}, the limit is {_size(max_bytes)}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (see `open_regular`)."""
    with open_regular(path, max_bytes) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while being read
        raise FileReadError(f"too large: more than the limit of {_size(max_bytes)}")
    return data


# --- YAML without duplicate keys ---------------------------------------------------------------------------
class DuplicateKeyError(UserError):
    """A YAML mapping names a key twice. `line` is 1-based (the second occurrence); `first` the first's."""

    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"duplicate key {key!r} (first on line {first})")
        self.key, self.line, self.first = key, line, first


def _strict_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` overrides by design
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        hash(key)
                    except TypeError:
                        continue  # SafeLoader reports an unhashable key itself
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        raise DuplicateKeyError(key, line, seen[key])
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

        def get_single_data(self):
            node = self.get_single_node()
            if node is None:
                return None
            _check_expansion(node)
            return self.construct_document(node)

    return StrictLoader


#: The most values a YAML document may stand for once its aliases are followed. Anchors and aliases (`&d`,
#: `<<: *d`) are welcome; a few lines of nested aliases that stand for billions of values ("billion laughs")
#: would take the config's validation minutes and gigabytes, and a recursive one forever.
MAX_YAML_VALUES = 2_000_000


def _check_expansion(root) -> None:
    """yaml.MarkedYAMLError when the document stands for more than MAX_YAML_VALUES values (marked at the
    innermost node that does) or for an endless one (marked at the anchored node that contains its own alias)."""
    import yaml

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise yaml.MarkedYAMLError(
                problem="an alias refers to a node that contains it", problem_mark=node.start_mark
            )
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        total = 1 + sum(size(child) for child in children)
        if total > MAX_YAML_VALUES:
            raise yaml.MarkedYAMLError(
                problem=f"its aliases make it stand for more than {MAX_YAML_VALUES:,} values",
                problem_mark=node.start_mark,
            )
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root)


def yaml_problem(exc: Exception) -> tuple[int | None, str]:
    """A yaml.YAMLError's 1-based line (None if it has no mark) and its problem in one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return (mark.line + 1 if mark is not None else None), problem


def load_yaml(text: str) -> Any:
    """`yaml.safe_load` that refuses a mapping with a duplicate key (DuplicateKeyError naming key and line) and
    a document whose aliases make it endless or larger than MAX_YAML_VALUES (a yaml.MarkedYAMLError)."""
    import yaml

    return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass


class LockHeld(Exception):
    """`hold_lock`: another process holds the lock; `pid` is what it wrote there ("?" if nothing)."""

    def __init__(self, pid: str):
        super().__init__(pid)
        self.pid = pid


def hold_lock(lock_path: Path) -> int:
    """Take an exclusive `flock` on `lock_path` (created if missing; a symlink there is refused) and write this
    process's pid into it; the returned descriptor holds the lock until it is closed (or the process dies).
    LockHeld when another process holds it. OSError (its `strerror` says why) when the file cannot be opened
    (`filename` set) or locked or written (`filename` None; ENOLCK or EOPNOTSUPP: a filesystem without locks)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockHeld(os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd
