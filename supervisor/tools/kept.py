"""Sessions kept for a client that never names one: MCP's keep_state, the console's toggle."""

from __future__ import annotations

import contextlib
from typing import Any

from protocol import messages as m
from protocol.client import AsyncClient, ServiceError
from protocol.errors import ErrorCode
from protocol.nodes import AsyncNodes

Key = tuple[str, str, str, str]  # (client id, conversation id, language, environment)


class KeptSessions:
    """The session a client keeps per key (who, conversation, language, environment): opened on first
    use, opened again when it has ended. The MCP server's ``keep_state`` and the
    console's "keep state" are this."""

    def __init__(self, client: AsyncClient | AsyncNodes) -> None:
        self.client = client
        self.open: dict[Key, str] = {}

    async def run(self, key: Key, code: str, **options: Any) -> tuple[m.ExecuteResult, str]:
        """Run in the key's session (opened when it has none, or its last one ended);
        also a note when a new session had to be started."""
        note = ""
        for attempt in range(2):
            session = self.open.get(key)
            if session is None:
                client_id, conversation_id, language, environment = key
                try:
                    info = await self.client.session_open(
                        language, environment=environment, client_id=client_id, conversation_id=conversation_id
                    )
                except ServiceError as exc:
                    return m.ExecuteResult(id="", status=m.Status.REJECTED, error=exc.error), ""
                session = self.open[key] = info.session
                note = "(a new session was started: nothing from earlier calls is defined in it)" if attempt else ""
            result = await self.client.execute(
                code, session=session, client_id=key[0], conversation_id=key[1], **options
            )
            lost = result.error is not None and result.error.code is ErrorCode.SESSION_NOT_FOUND
            if result.session_ended or lost:
                self.open.pop(key, None)
            if not lost:
                return result, note
        return result, note

    async def close_all(self) -> None:
        for (client_id, _, _, _), session in list(self.open.items()):
            with contextlib.suppress(ServiceError):
                await self.client.session_close(session, client_id=client_id)
        self.open.clear()
