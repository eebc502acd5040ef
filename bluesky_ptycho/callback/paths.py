"""Which files a document may make the callback open (worker thread).

Resource and StreamResource documents name files; anyone who can send
documents to the callback can name any path. :class:`PathPolicy` resolves every
such path (``root_map`` first, then :func:`os.path.realpath`, so ``..`` and
symlinks are followed to where they really lead) and refuses it unless:

* ``data_roots`` given: the resolved path lies under one of them (resolved the
  same way);
* ``data_roots`` None (default): the path does not lie under a system
  directory (:data:`SYSTEM_ROOTS`), and a Resource's ``resource_path`` does not
  leave its ``root``. A warning says once per callback that files are not
  confined. Beamlines set ``data_roots`` (docs/security.md).

StreamResource URIs must be ``file:`` URIs (or bare paths); other schemes are
refused. A refusal is a :class:`RefusedPath` (a ``ValueError``) whose message
says what was refused, where it came from, and how to allow it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlparse

logger = logging.getLogger(__name__)

#: refused when ``data_roots`` is None (never where detector data belongs)
SYSTEM_ROOTS = (
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/run",
    "/bin",
    "/sbin",
    "/usr",
    "/lib",
    "/lib64",
    "/var/run",
    "/var/lib",
)


class RefusedPath(ValueError):
    """A document named a file the callback must not open."""


def _resolved(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class PathPolicy:
    """Resolve and confine the files documents name (see module docstring).

    data_roots : directories data files must lie under, or None (see module docstring).
    root_map : path prefix replacements applied before resolving (data moved).
    """

    def __init__(
        self, data_roots: Iterable[str] | None = None, root_map: Mapping[str, str] | None = None
    ) -> None:
        self.data_roots = None if data_roots is None else tuple(_resolved(r) for r in data_roots)
        self._root_map = dict(root_map or {})
        self._warned = threading.Event()

    def _mapped(self, path: str) -> str:
        for old, new in self._root_map.items():
            if path.startswith(old):
                return new + path[len(old) :]
        return path

    def resource_path(self, root: str, resource_path: str, where: str) -> str:
        """The file of a Resource (``root`` joined with ``resource_path``), checked."""
        root = self._mapped(root or "")
        joined = os.path.join(root, resource_path) if root else resource_path
        resolved = self.check(joined, where)
        if self.data_roots is None and root and not _under(resolved, _resolved(root)):
            raise RefusedPath(
                f"{where}: resource_path {resource_path!r} leads to {resolved!r}, outside "
                f"its root {root!r}; fix the document, or allow the directory with "
                f"PtychoCallback(data_roots=[...])"
            )
        return resolved

    def uri_path(self, uri: str, where: str) -> str:
        """The file of a StreamResource ``uri`` (``file:`` or a bare path), checked."""
        parsed = urlparse(uri)
        if parsed.scheme not in ("", "file"):
            raise RefusedPath(
                f"{where}: URI {uri!r} has scheme {parsed.scheme!r}; only local files "
                f"(file: URIs) are read: copy the data to a directory in data_roots"
            )
        if parsed.netloc not in ("", "localhost"):
            raise RefusedPath(
                f"{where}: URI {uri!r} names host {parsed.netloc!r}; only local files "
                f"(file:///path or file://localhost/path) are read"
            )
        return self.check(self._mapped(unquote(parsed.path)), where)

    def check(self, path: str, where: str) -> str:
        """``path`` resolved; RefusedPath unless it is allowed (module docstring)."""
        resolved = _resolved(path)
        if self.data_roots is not None:
            if not any(_under(resolved, root) for root in self.data_roots):
                raise RefusedPath(
                    f"{where}: file {path!r} (resolved {resolved!r}) is outside data_roots "
                    f"{list(self.data_roots)}; add its directory to "
                    f"PtychoCallback(data_roots=[...]) if it holds detector data"
                )
            return resolved
        system = next((r for r in SYSTEM_ROOTS if _under(resolved, r)), None)
        if system is not None:
            raise RefusedPath(
                f"{where}: file {path!r} (resolved {resolved!r}) is in the system directory "
                f"{system!r}, never detector data; set PtychoCallback(data_roots=[...]) "
                f"to the detector's data directories"
            )
        if not self._warned.is_set():
            self._warned.set()
            logger.warning(
                "ptycho: data_roots is not set: files named by documents are read from "
                "anywhere outside system directories (first: %s); set "
                "PtychoCallback(data_roots=[...]) to confine them",
                resolved,
            )
        return resolved
