"""The one rule for clients that may open an aiohttp session of their own."""

from __future__ import annotations

from types import TracebackType

import aiohttp


class OwnsSession:
    """`async with` support and `close()`: the session the client opened itself
    (`_owned_session`) is closed; an injected one is left to its owner."""

    _owned_session: aiohttp.ClientSession | None = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session the client opened itself (an injected one is left alone)."""
        if self._owned_session is not None:
            await self._owned_session.close()
            self._owned_session = None
