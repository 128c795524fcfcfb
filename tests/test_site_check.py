"""The built-site check (`make site-check`) in real headless Chromium, on a small site with known faults."""
from __future__ import annotations

import pytest
from PIL import Image
from site_check import check_site, find_chromium, main, site_pages

GOOD = """<html><body><h1>fine</h1><img src="pixel.png">
<details class="hide above-input"><summary>Show code cell source</summary><pre>print(1)</pre></details>
</body></html>"""
BAD = """<html><body><h1>broken</h1><img src="missing.png">
<script src="https://cdn.example.org/lib.js"></script>
<script>undefinedFunction();</script>
<script type="application/vnd.jupyter.widget-view+json">{"model_id": "x"}</script>
</body></html>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    found = find_chromium()
    if found is None:
        pytest.skip("no Chromium on PATH (as root: make chromium)")
    pytest.importorskip("playwright")
    return found


@pytest.fixture
def site(tmp_path):
    html = tmp_path / "html"
    (html / "book").mkdir(parents=True)
    (html / "_static").mkdir()
    Image.new("L", (4, 4), 128).save(html / "book" / "pixel.png")
    (html / "book" / "good.html").write_text(GOOD)
    (html / "book" / "bad.html").write_text(BAD)
    (html / "_static" / "ignored.html").write_text(BAD)  # Sphinx's static files are not pages
    return html


def test_pages_are_the_built_pages_only(site):
    assert [p.as_posix() for p in site_pages(site)] == ["book/bad.html", "book/good.html"]


def test_a_sound_page_passes_and_each_fault_is_named(site, tmp_path, chromium):
    reports = {r.path: r for r in check_site(site, tmp_path / "shots", chromium)}
    good, bad = reports["book/good.html"], reports["book/bad.html"]
    assert good.failures == [] and (good.images, good.toggles) == (1, 1)
    assert (tmp_path / "shots" / "book" / "good.png").stat().st_size > 0
    faults = "\n".join(bad.failures)
    assert bad.blocked == ["https://cdn.example.org/lib.js"] and "leaving the machine" in faults
    assert "image did not load" in faults and "missing.png" in faults
    assert "undefinedFunction" in faults  # the JavaScript error, by name
    assert "widget views but no embedded widget state" in faults


def test_command_fails_on_a_bad_page_and_passes_without_it(site, tmp_path, chromium, capsys):
    assert main([str(site), "--screenshots", str(tmp_path / "a")]) == 1
    assert "FAIL book/bad.html" in capsys.readouterr().out
    (site / "book" / "bad.html").unlink()
    assert main([str(site), "--screenshots", str(tmp_path / "b")]) == 0
    assert "1 of 1 pages passed" in capsys.readouterr().out
