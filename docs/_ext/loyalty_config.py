"""A ``loyalty-config`` directive: the configuration reference, generated from ``flask_loyalty.config``."""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive


class LoyaltyConfig(Directive):
    """Render every ``LOYALTY_`` key with its default and meaning as a table."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from flask_loyalty.config import SETTINGS

        table = nodes.table()
        group = nodes.tgroup(cols=3)
        table += group
        for width in (30, 25, 45):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += self._row(["Key", "Default", "Meaning"])
        body = nodes.tbody()
        group += body
        for setting in SETTINGS:
            body += self._row([setting.key, repr(setting.default), setting.doc], literal=(0, 1))
        return [table]

    @staticmethod
    def _row(cells: list[str], literal: tuple[int, ...] = ()) -> nodes.row:
        row = nodes.row()
        for index, text in enumerate(cells):
            entry = nodes.entry()
            para = nodes.paragraph()
            para += nodes.literal(text=text) if index in literal else nodes.Text(text)
            entry += para
            row += entry
        return row


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("loyalty-config", LoyaltyConfig)
    return {"parallel_read_safe": True}
