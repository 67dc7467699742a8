"""Release readiness: ``python -m build`` makes an sdist and a wheel that ship everything at run time.

The build runs offline (``--no-isolation``: the build requirements come from
the test environment) on a copy of the source tree, so it neither needs the
network nor leaves ``build/`` or ``dist/`` behind.  The wheel is built from
the sdist, as ``python -m build`` does, so both are checked at once; then the
wheel is unpacked into an empty folder and a smoke test imports the package
from there and uses its templates and compiled catalogs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow
pytest.importorskip("build", reason="the `build` package (dev extra) is needed to build the package")

SMOKE = textwrap.dedent("""
    import sys
    from decimal import Decimal
    from pathlib import Path

    import flask_loyalty
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    from flask_loyalty import Loyalty
    from flask_loyalty.i18n import render, translations_for

    assert Path(flask_loyalty.__file__).is_relative_to(sys.argv[1]), flask_loyalty.__file__
    assert flask_loyalty.__version__ != "0.0.0"
    db = SQLAlchemy()
    app = Flask("smoke")
    app.config.update(SECRET_KEY="smoke", SQLALCHEMY_DATABASE_URI="sqlite://")
    db.init_app(app)
    loyalty = Loyalty(app, db)
    with app.app_context():
        db.create_all()
        loyalty.create_all()
        purchase = loyalty.record_purchase("o-1", "c-1", Decimal("12.50"))
        assert purchase.points_earned == 12
    with app.test_request_context("/"):
        html = render("loyalty/error.html", title="T", message="M", status=404, locale="es")
        assert 'lang="es"' in html and "loyalty.css" in html
    client = app.test_client()
    assert client.get(app.config["LOYALTY_URL_PREFIX"] + "/static/loyalty.css").status_code == 200
    for locale in ("es", "ro", "ru"):
        assert translations_for(locale).gettext("Skip to content") != "Skip to content", locale
    print("smoke ok")
""")


def _copy_source(target: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "_build",
                                    ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", "instance",
                                    "*.db")
    source = target / "src"
    shutil.copytree(ROOT, source, ignore=ignore)
    return source


def test_build_sdist_and_wheel_ship_templates_static_catalogs_and_types(tmp_path):
    source = _copy_source(tmp_path)
    out = tmp_path / "dist"
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
                            capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [sdist] = out.glob("flask_loyalty-*.tar.gz")
    [wheel] = out.glob("flask_loyalty-*-py3-none-any.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    assert "flask_loyalty/py.typed" in names
    assert "flask_loyalty/templates/loyalty/base.html" in names
    assert "flask_loyalty/static/loyalty/loyalty.css" in names
    for locale in ("en", "es", "ro", "ru"):
        catalogs = {n for n in names if n.startswith(f"flask_loyalty/translations/{locale}/LC_MESSAGES/")}
        assert {n for n in catalogs if n.endswith(".mo")}, f"no compiled catalog for {locale}"
        # every source catalog ships compiled
        assert {n[:-3] for n in catalogs if n.endswith(".po")} <= {n[:-3] for n in catalogs if n.endswith(".mo")}
    # the demo shop, tests and docs are not part of the library
    assert not {n for n in names if n.split("/")[0] in ("example_shop", "tests", "docs", "benchmarks")}
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: Flask>=3.0" in meta and "Provides-Extra: postgres" in meta

    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"README.md", "pyproject.toml", "flask_loyalty/py.typed", "CHANGELOG.md"} <= members

    # A fresh install location: the unpacked wheel, with the test environment's dependencies.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    smoke = subprocess.run([sys.executable, "-c", SMOKE, str(site)], capture_output=True, text=True,
                           cwd=tmp_path, env={**env, "PYTHONPATH": str(site)}, timeout=120)
    assert smoke.returncode == 0, smoke.stdout[-3000:] + smoke.stderr[-3000:]
    assert "smoke ok" in smoke.stdout
