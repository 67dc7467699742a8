"""CSV files that are safe to open in a spreadsheet: every CSV the package writes goes through :class:`CsvWriter`.

Names, campaign labels and other text in an export may come from shoppers
or checkouts.  A spreadsheet reads a cell starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return as a formula (CSV or formula injection:
``=HYPERLINK(...)``, ``=cmd|...``), so such a text cell is written with a
leading single quote, which spreadsheets show as text.  Numbers stay as they
are: ``int``/``Decimal`` values and text that is just a number (``-5.00``,
``-12.5%``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

#: The first characters a spreadsheet takes for the start of a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?%?")


def safe_cell(value: Any) -> Any:
    """``value`` as written to a CSV cell: text that a spreadsheet would run as a formula gets a leading ``'``."""
    if isinstance(value, (int, float, Decimal)) or not isinstance(value, str):
        return value
    if value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


class CsvWriter:
    """A ``csv.writer`` whose rows pass through :func:`safe_cell` (same arguments as ``csv.writer``)."""

    def __init__(self, output: Any, **kwargs: Any) -> None:
        self._writer = csv.writer(output, **kwargs)

    def writerow(self, row: Iterable[Any]) -> Any:
        """Write one row."""
        return self._writer.writerow([safe_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        """Write every row."""
        for row in rows:
            self.writerow(row)
