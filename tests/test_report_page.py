"""`mixerbench report`: one self-contained HTML page, read as HTML and rendered by Chromium.

The page is written from a copy of the committed results folder. The static checks parse it;
the browser test opens it in headless Chromium (skipped, saying why, where Chromium is missing
or cannot start) and checks what a reader's browser does with it.
"""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

import browser
from mixerbench.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report") / "results"
    shutil.copytree(ROOT / "results", folder)
    r = CliRunner().invoke(app, ["report", "--results-dir", str(folder)])
    assert r.exit_code == 0, r.output
    page = folder / "report" / "index.html"
    assert r.output.strip() == f"wrote {page}"
    return page


class Page(HTMLParser):
    """Tags, ids, links, image sources and the claims card of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.ids, self.hrefs, self.srcs, self.claims = [], set(), [], [], []
        self.handlers = []  # on* attributes: script, which the page never has
        self._badge = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.handlers += [k for k in a if k.startswith("on")]
        if "id" in a:
            self.ids.add(a["id"])
        if "href" in a:
            self.hrefs.append(a["href"])
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        if "data-claim" in a:
            self.claims.append([a["data-claim"], a["data-verdict"], []])
        self._badge = tag == "span" and "badge" in a.get("class", "") and bool(self.claims) \
            and self.tags[-2:-1] == ["li"]

    def handle_data(self, data):
        if self._badge:
            self.claims[-1][2].append(data)
            self._badge = False


def claims_json(folder: Path) -> list:
    r = CliRunner().invoke(app, ["claims", "--results-dir", str(folder), "--format", "json"])
    assert r.exit_code == 0, r.output
    return [[c["id"], c["verdict"], [x["verdict"] for x in c["comparisons"]]]
            for c in json.loads(r.output)]


def test_the_report_needs_nothing_outside_itself(report_page):
    text = report_page.read_text()
    page = Page(text)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert len(page.srcs) >= 4 and all(s.startswith("data:image/png;base64,") for s in page.srcs)
    assert page.hrefs and all(h.startswith("#") and h[1:] in page.ids for h in page.hrefs)
    style = re.search(r"<style>(.*?)</style>", text, re.S).group(1)
    assert "url(" not in style and "@import" not in style and "@font-face" not in style
    assert page.handlers == []
    # every run of the committed rows has its section, and the claims link to them
    assert "run-mixer-t4-mnist-5k-s0-77701761" in page.ids and "bench-20261201T165850Z-771eb0" in page.ids
    assert "#run-mixer-t4-mnist-5k-s0-77701761" in page.hrefs
    # and each run's section names the recipe its seeds are averaged under
    assert "recipe_id <code>mixer-t4-mnist-5k-316e4bde</code>" in text


def test_the_reports_claims_are_the_claims_command(report_page):
    assert Page(report_page.read_text()).claims == claims_json(report_page.parents[1])


def test_the_committed_report_is_the_one_report_writes(report_page):
    """Everything but the figures' pixels (PNG bytes may differ between font builds)."""
    strip = lambda t: re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", t)  # noqa: E731
    committed = ROOT / "results" / "report" / "index.html"
    assert strip(committed.read_text()) == strip(report_page.read_text()), (
        "results/report/index.html is stale: run `mixerbench report --results-dir results`")
    assert (ROOT / "docs" / "report.png").read_bytes().startswith(b"\x89PNG")


def test_a_damaged_csv_is_refused_and_no_page_is_written(tmp_path):
    (tmp_path / "accuracy.csv").write_text("run_id,oops\nx,1\n")
    r = CliRunner().invoke(app, ["report", "--results-dir", str(tmp_path)])
    assert r.exit_code == 2 and "accuracy.csv" in r.output
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_the_report_in_a_real_browser(report_page):
    if browser.executable() is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium)")
    try:
        seen = browser.render(report_page)
    except RuntimeError as err:
        pytest.skip(f"chromium could not start here: {err}")
    assert seen["requests"][0] == report_page.resolve().as_uri()
    assert all(u.startswith("data:") for u in seen["requests"][1:]), seen["requests"]
    assert seen["errors"] == []
    assert len(seen["images"]) >= 4
    assert all(complete and width > 0 for _, complete, width in seen["images"]), seen["images"]
    assert seen["broken_anchors"] == []
    assert seen["claims"] == claims_json(report_page.parents[1])


def test_a_table_row_of_a_recipe_links_to_each_of_its_runs():
    import pandas as pd

    from mixerbench.report.page import anchor, table_html, with_runs

    acc = pd.DataFrame({"run_id": ["m-s0", "m-s1", "v-s0"], "recipe_id": ["m", "m", "v"]})
    table = with_runs(pd.DataFrame({"recipe_id": ["m", "v"], "top1_mean": [90.1, 85.0]}),
                      {"accuracy": acc})
    assert list(table["runs"]) == [("m-s0", "m-s1"), ("v-s0",)]
    page = Page(table_html(table, {anchor("run", r) for r in ("m-s0", "m-s1")}))
    assert page.hrefs == ["#run-m-s0", "#run-m-s1"]  # v-s0 has no section here: no link


def test_names_from_the_csvs_are_shown_as_text_never_as_markup(tmp_path):
    from mixerbench import results

    evil = '<img src=x onerror="alert(1)">'
    for seed in range(2):
        results.append_row("accuracy", dict(
            run_id=f"r{seed}", model=evil, family="mixer", dataset=evil, split="test",
            img_size=28, epochs=1, steps=10, top1=50.0 + seed, kind="pretrain",
            experiment="compare:" + evil, seed=seed, device_name=evil), tmp_path)
    r = CliRunner().invoke(app, ["report", "--results-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "report" / "index.html").read_text()
    page = Page(text)
    assert page.handlers == [] and "script" not in page.tags
    assert all(s.startswith("data:image/png;base64,") for s in page.srcs)
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
