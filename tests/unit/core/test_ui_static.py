"""The CX page's files ship as package data and need nothing from the internet."""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path

STATIC = resources.files("touchstream.ui") / "static"
VENDOR_README = Path(__file__).resolve().parents[3] / "core" / "ui" / "static" / "vendor"


def text(name: str) -> str:
    return (STATIC / name).read_text("utf-8")


def test_page_files_are_installed_package_data() -> None:
    for name in ("index.html", "app.js", "app.css", "vendor/uPlot.iife.min.js"):
        assert (STATIC / name).is_file(), name
    assert "uPlot" in text("vendor/uPlot.iife.min.js")


def test_nothing_is_loaded_from_elsewhere() -> None:
    html = text("index.html")
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "static/app.js" in references and "static/vendor/uPlot.iife.min.js" in references
    for ref in references:
        assert ref == "data:," or (ref.startswith("static/") and (STATIC / ref[7:]).is_file()), ref
    for name in ("index.html", "app.js", "app.css"):
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text(name)), name
    # Inline scripts and handlers would need 'unsafe-inline', which the page's CSP forbids.
    assert "<script>" not in html and not re.search(r"\son[a-z]+=", html)


def test_page_script_never_writes_markup() -> None:
    script = text("app.js")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "textContent" in script


def test_vendored_files_match_their_recorded_hashes() -> None:
    readme = (VENDOR_README / "README.md").read_text("utf-8")
    recorded = dict(
        (name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M)
    )
    assert set(recorded) == {"uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"}
    for name, digest in recorded.items():
        data = (VENDOR_README / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name
    assert "| 1.6.32 | MIT" in readme
    assert "MIT License" in (VENDOR_README / "uPlot.LICENSE").read_text("utf-8")
