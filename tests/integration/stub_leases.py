"""A lease on a function instance for gateway tests whose pool is not under test: the address
of a real upstream, nothing recorded when it is released."""

from __future__ import annotations


class StubLease:
    def __init__(
        self, address: tuple[str, int], *, instance_id: str = "fn-0", timeout_s: float = 30.0
    ) -> None:
        self.address = address
        self.instance_id = instance_id
        self.timeout_s = timeout_s

    def release(self, *, ok: bool, status: int, duration_s: float) -> None:
        pass

    def kill(self, reason: str) -> None:
        pass

    async def exit_reason(self, wait_s: float) -> str | None:
        return None
