"""The command palette's commands (ctrl+p): filters, exports, screens."""
from __future__ import annotations

from textual.command import DiscoveryHit, Hit, Hits, Provider


class LvsCommands(Provider):
    """Commands the app lists in ``palette_commands()``: "filter: DR only", "export: findings as
    JUnit", "export: this connection as pcap", ..."""

    def _commands(self):
        get = getattr(self.app, "palette_commands", None)
        return get() if get is not None else []

    async def discover(self) -> Hits:
        for name, help_text, callback in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)
