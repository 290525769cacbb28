"""``hemaflow run`` as a new user sees it: a short terminal, a run page that works in a browser.

One shrunk quickstart run (module-scoped, started as the ``hemaflow`` command in a child
process, so the line count includes whatever reaches the real terminal) serves both tests.
The page and every page it links are opened in headless Chromium (Debian's, never a
downloaded one); a broken link, an image that does not load or a console error fails the
test, and a screenshot of each page is saved in the test's tmp_path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The quickstart, smaller still: every stage and both fan-outs run, in a couple of minutes.
SHRINK = [
    "--set",
    "data.synthetic_per_class=40",
    "--set",
    "train.epochs=2",
    "--set",
    "tune.max_trials=1",
    "--set",
    "evaluate.severities=[3]",
]
MAX_LINES = 40


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory) -> tuple[Path, str]:
    """The --out folder of one quiet run and everything it printed (stdout and stderr)."""
    base = tmp_path_factory.mktemp("quiet_run")
    out = base / "out"
    env = {**os.environ, "HEMAFLOW_CACHE": str(base / "cache")}
    for key in ("TF_CPP_MIN_LOG_LEVEL", "HEMAFLOW_PROFILES"):  # see what a user would see
        env.pop(key, None)
    command = [sys.executable, "-m", "hemaflow", "run", "--out", str(out), "--no-cache", *SHRINK]
    done = subprocess.run(
        command, cwd=base, env=env, capture_output=True, text=True, timeout=1200, check=False
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-4000:]
    return out, printed


def test_a_quiet_run_prints_one_line_per_task_and_keeps_the_rest_in_logs(quiet_run):
    out, printed = quiet_run
    lines = printed.splitlines()
    assert len(lines) <= MAX_LINES, printed
    assert (
        "executor_input" not in printed and "no effect in the current local runner" not in printed
    )
    assert "oneDNN" not in printed and "cuda" not in printed.lower()
    assert f"tensorboard --logdir {out / 'tensorboard'}" in printed
    assert str(out / "index.html") in printed
    for path in (out / "index.html", out / "logs", out / "tensorboard"):
        assert path.exists(), path
    logs = {p.name for p in (out / "logs").iterdir()}
    for name in ("configure", "ingest", "balance-and-augment", "select-top-k", "ensemble"):
        assert f"{name}.log" in logs, sorted(logs)
    for backbone in ("small_cnn", "resnet_mini"):
        assert f"compare-{backbone}.log" in logs, sorted(logs)
    assert sum(name.startswith(("tune-", "train-")) for name in logs) == 4, sorted(logs)
    assert "executor_input" in (out / "logs" / "compare-resnet_mini.log").read_text()
    assert "evaluate.log" in logs


def _page_problems(page, url: str) -> list[str]:
    """Images on the loaded page that did not load."""
    broken = page.evaluate(
        "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
        ".map(i => i.alt || i.src.slice(0, 80))"
    )
    return [f"{url}: image did not load: {name}" for name in broken]


def test_the_run_page_and_every_page_it_links_work_in_a_browser(quiet_run, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package 'chromium')")
    sync_api = pytest.importorskip("playwright.sync_api")
    out, _ = quiet_run
    index = (out / "index.html").resolve()
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on(
                "console",
                lambda m: (
                    problems.append(f"{page.url}: console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"{page.url}: page error: {e}"))
            page.on(
                "requestfailed",
                lambda r: problems.append(f"{page.url}: request failed: {r.url} {r.failure}"),
            )
            page.goto(index.as_uri(), wait_until="load")
            hrefs = page.eval_on_selector_all("a[href]", "els => els.map(a => a.href)")
            problems += _page_problems(page, "index.html")
            page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
            linked: list[Path] = []
            for href in dict.fromkeys(hrefs):
                parsed = urlparse(href)
                assert parsed.scheme == "file", f"index.html links outside the run: {href}"
                target = Path(unquote(parsed.path))
                if not target.exists():
                    problems.append(f"index.html: broken link {href}")
                    continue
                linked.append(target)
            for target in linked:
                if target.suffix != ".html":
                    continue  # logs, Markdown and JSON: checked to exist above
                page.goto(target.as_uri(), wait_until="load")
                problems += _page_problems(page, target.name)
                page.screenshot(path=str(tmp_path / f"{target.stem}.png"), full_page=True)
        finally:
            browser.close()
    assert not problems, "\n".join(problems)
    names = {t.name for t in linked}
    expected = {"ingest", "balance-and-augment", "ensemble", "evaluate"}
    expected |= {f"compare-{b}" for b in ("small_cnn", "resnet_mini")}
    assert {f"{n}.html" for n in expected} <= names, sorted(names)
    assert sum(n.startswith(("tune-", "train-")) and n.endswith(".html") for n in names) == 4
    assert "model_card.html" in names
    assert (tmp_path / "index.png").is_file()
