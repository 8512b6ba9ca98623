"""Memory limits per instance: a cgroup v1 memory group where writable, RLIMIT_AS otherwise.

The cgroup is made before the worker starts (the worker moves itself into it first thing) and
removed after it exits; ``breached`` tells whether the kernel killed it for memory, so the
caller can say so instead of a bare "killed by signal 9".
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryFence:
    """How one instance's memory is bounded."""

    cgroup_procs: str | None
    use_rlimit: bool


class MemoryLimiter:
    """Creates and removes per-instance memory cgroups under ``<root>/funcmesh``."""

    def __init__(self, root: Path = CGROUP_V1_MEMORY, *, group: str = "funcmesh") -> None:
        self._base = root / group
        self.uses_cgroups = self._prepare_base(root)

    def _prepare_base(self, root: Path) -> bool:
        if not (root / "cgroup.procs").exists() or not os.access(root, os.W_OK):
            return False
        try:
            self._base.mkdir(exist_ok=True)
        except OSError as exc:
            logger.info("memory cgroups unavailable (%s); using RLIMIT_AS", exc)
            return False
        return True

    def fence(self, pod: str, limit_bytes: int | None) -> MemoryFence:
        """Set up the limit for a new instance (nothing when there is no limit)."""
        if not limit_bytes:
            return MemoryFence(cgroup_procs=None, use_rlimit=False)
        if self.uses_cgroups:
            group = self._base / pod
            try:
                group.mkdir(exist_ok=True)
                (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
                swap = group / "memory.memsw.limit_in_bytes"
                if swap.exists():
                    swap.write_text(str(limit_bytes))
                return MemoryFence(cgroup_procs=str(group / "cgroup.procs"), use_rlimit=False)
            except OSError as exc:
                logger.warning("could not set up memory cgroup for %s: %s", pod, exc)
        return MemoryFence(cgroup_procs=None, use_rlimit=True)

    def breached(self, pod: str) -> bool:
        """Whether the kernel's OOM killer fired in the instance's group."""
        control = self._base / pod / "memory.oom_control"
        try:
            fields = dict(line.split() for line in control.read_text().splitlines())
        except (OSError, ValueError):
            return False
        return int(fields.get("oom_kill", "0")) > 0

    def release(self, pod: str) -> None:
        try:
            (self._base / pod).rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not remove memory cgroup of %s: %s", pod, exc)
