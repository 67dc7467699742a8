"""A ``loyalty-screenshots`` directive: every ``docs/_static/*.png`` as a captioned figure, grouped.

Tests and helpers save screenshots into ``docs/_static`` (``journey-03-wallet.png``,
``admin-overview.png`` ...); this page picks up whatever is there, so it never
lists an image that does not exist nor misses one that does.  The group is the
part of the name before the first dash; the caption is the rest.
"""

from __future__ import annotations

import re
from itertools import groupby
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive

GROUP_TITLES = {
    "journey": "The shopper's journey (from the browser test)",
    "demo": "The demo shop's dashboard after the first start (a seeded year)",
    "admin": "The dashboard",
    "dashboard": "The dashboard",
    "survey": "The survey",
    "wallet": "The wallet",
    "coupon": "Coupon cards",
    "consent": "Consent pages",
    "shop": "The demo shop",
}
#: Order of the groups on the page; groups not listed follow in alphabetical order.
GROUP_ORDER = ["journey", "demo", "wallet", "coupon", "survey", "consent", "admin", "dashboard", "shop"]


def caption_of(stem: str) -> str:
    """``journey-03-wallet-print`` -> ``Wallet print``."""
    words = [w for w in re.split(r"[-_]", stem.split("-", 1)[1] if "-" in stem else stem) if not w.isdigit()]
    text = " ".join(words) or stem
    return text[:1].upper() + text[1:]


class LoyaltyScreenshots(Directive):
    """Render the screenshots found in ``_static`` next to the current document."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        static = Path(env.srcdir) / "_static"
        env.note_dependency(str(static))  # a screenshot added or removed changes the folder: rebuild this page
        rank = {name: index for index, name in enumerate(GROUP_ORDER)}
        images = sorted(static.glob("*.png"),
                        key=lambda p: (rank.get(p.stem.split("-", 1)[0], len(rank)), p.stem))
        if not images:
            return [nodes.paragraph(text="No screenshots have been taken yet: run the browser tests.")]
        result: list[nodes.Node] = []
        for group, members in groupby(images, key=lambda p: p.stem.split("-", 1)[0]):
            section = nodes.section(ids=[f"screens-{group}"])
            section += nodes.title(text=GROUP_TITLES.get(group, group.capitalize()))
            for image in members:
                env.note_dependency(str(image))
                figure = nodes.figure()
                figure += nodes.image(uri=f"_static/{image.name}", alt=caption_of(image.stem),
                                      candidates={"*": f"_static/{image.name}"})
                figure += nodes.caption(text=caption_of(image.stem))
                section += figure
            result.append(section)
        return result


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("loyalty-screenshots", LoyaltyScreenshots)
    return {"parallel_read_safe": True}
