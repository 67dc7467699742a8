"""Maintain the translations of flask_loyalty (shopper pages, mails and the shop owner's dashboard).

Each area of the package keeps its own catalog per locale:
``flask_loyalty/translations/<locale>/LC_MESSAGES/<area>.po``.  At run time
all compiled catalogs of a locale are merged.

    python scripts/translations.py extract   # list msgids used in code/templates -> messages.pot
    python scripts/translations.py missing   # msgids without a translation, per locale (exit 1 if any)
    python scripts/translations.py compile   # every .po -> .mo (run after editing a .po)
"""

from __future__ import annotations

import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flask_loyalty"
TRANSLATIONS = PACKAGE / "translations"
LOCALES = ("es", "ro", "ru")  # English is the source language
METHOD_MAP = [("**/templates/**.html", "jinja2"), ("**/templates/**.txt", "jinja2"), ("**.py", "python")]
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}


def extract() -> dict[str, list[tuple[str, int]]]:
    """Every msgid in the package with where it is used."""
    found: dict[str, list[tuple[str, int]]] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
            str(PACKAGE), METHOD_MAP, keywords=KEYWORDS, options_map={"**/templates/**": {"extensions": ""}}):
        ids = message if isinstance(message, tuple) else (message,)
        for msgid in ids[:1]:
            if msgid:
                found.setdefault(msgid, []).append((filename, lineno))
    return found


def catalogs(locale: str) -> list[Catalog]:
    """The area catalogs of one locale."""
    folder = TRANSLATIONS / locale / "LC_MESSAGES"
    result = []
    for po in sorted(folder.glob("*.po")):
        with po.open("rb") as fh:
            result.append(read_po(fh, locale=locale))
    return result


def missing() -> dict[str, list[str]]:
    """Per locale, the msgids used in the package that no catalog translates."""
    used = extract()
    report: dict[str, list[str]] = {}
    for locale in LOCALES:
        translated: set[str] = set()
        for cat in catalogs(locale):
            for m in cat:
                if m.id and m.string and (not isinstance(m.string, tuple) or all(m.string)):
                    translated.add(m.id if isinstance(m.id, str) else m.id[0])
        report[locale] = sorted(set(used) - translated)
    return report


def compile_all() -> int:
    """Write a .mo beside every .po; returns how many."""
    count = 0
    for po in sorted(TRANSLATIONS.glob("*/LC_MESSAGES/*.po")):
        with po.open("rb") as fh:
            cat = read_po(fh, locale=po.parent.parent.name)
        with po.with_suffix(".mo").open("wb") as out:
            write_mo(out, cat, use_fuzzy=False)
        count += 1
    return count


def main(argv: list[str]) -> int:
    """Command-line entry point."""
    command = argv[1] if len(argv) > 1 else "missing"
    if command == "extract":
        cat = Catalog(project="flask_loyalty")
        for msgid, places in sorted(extract().items()):
            cat.add(msgid, locations=[(str(Path(f)), n) for f, n in places])
        with (ROOT / "messages.pot").open("wb") as fh:
            write_po(fh, cat)
        print(f"{len(cat)} messages -> messages.pot")
        return 0
    if command == "compile":
        print(f"compiled {compile_all()} catalogs")
        return 0
    if command == "missing":
        report = missing()
        bad = False
        for locale, ids in report.items():
            for msgid in ids:
                bad = True
                print(f"{locale}: {msgid!r}")
        print("all strings translated" if not bad else "missing translations listed above")
        return 1 if bad else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
