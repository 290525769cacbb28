"""The page of one local pipeline run: its tasks in DAG order, headline metrics, every report.

Pure: data in, HTML out. The page uses no script and no network, and links only to files
beside it, so it opens straight from the file system (``file://``). Gathering the task
states and copying the reports is the local runner's job (:mod:`hemaflow.pipeline.runners`).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hemaflow.reporting.report import SYNTHETIC_BANNER

#: The evaluation's figures shown at the top of the page, in this order.
HEADLINE_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "bmk_accuracy",
    "corrupted_accuracy",
    "independent_accuracy",
    "independent_worst_family_accuracy",
    "independent_severity5_accuracy",
    "ece",
    "log_loss",
)


@dataclass(frozen=True)
class PageTask:
    """One task as the page shows it; hrefs are relative to the page."""

    name: str
    state: str
    backbone: str | None = None
    seconds: float | None = None
    headline: str = ""
    report: str | None = None
    log: str | None = None
    tensorboard: str | None = None


@dataclass(frozen=True)
class RunPage:
    """Everything the page says about a run."""

    title: str
    state: str
    tasks: Sequence[PageTask]
    metrics: dict[str, Any] = field(default_factory=dict)
    links: Sequence[tuple[str, str]] = ()
    seconds: float | None = None
    synthetic: bool = False
    notes: Sequence[str] = ()
    # A time-limited run's plan with what happened (see hemaflow.pipeline.runners.plan_summary).
    plan: dict[str, Any] | None = None


def duration(seconds: float | None) -> str:
    """``0.4 s``, ``12 s``, ``3 min 05 s``; empty when unknown."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def headline_label(key: str, metrics: dict[str, Any]) -> str:
    """A card's label: the key in words, with the family named on a worst-family figure."""
    label = key.replace("_", " ")
    if key.endswith("worst_family_accuracy"):
        family = metrics.get(key.removesuffix("_accuracy"))
        if isinstance(family, str):
            label += f" ({family})"
    return label


def task_groups(tasks: Sequence[PageTask]) -> list[list[PageTask]]:
    """Consecutive tasks of one fan-out (those with a backbone) grouped together, in order."""
    groups: list[list[PageTask]] = []
    for task in tasks:
        if groups and task.backbone is not None and groups[-1][-1].backbone is not None:
            groups[-1].append(task)
        else:
            groups.append([task])
    return groups


def render(page: RunPage) -> str:
    """The run page as one HTML document."""
    e = html.escape
    banner = f'<div class="synthetic">{e(SYNTHETIC_BANNER)}</div>' if page.synthetic else ""
    took = f" in {e(duration(page.seconds))}" if page.seconds is not None else ""
    parts = [
        f"<h1>{e(page.title)}</h1>",
        banner,
        f'<p class="status">Run <span class="state {_state_class(page.state)}">'
        f"{e(page.state)}</span>{took}.</p>",
    ]
    cards = [
        f'<div class="card"><div class="value">{e(_number(page.metrics[k]))}</div>'
        f'<div class="key">{e(headline_label(k, page.metrics))}</div></div>'
        for k in HEADLINE_KEYS
        if isinstance(page.metrics.get(k), int | float) and not isinstance(page.metrics[k], bool)
    ]
    if cards:
        parts += ["<h2>Headline (test split)</h2>", f'<div class="cards">{"".join(cards)}</div>']
    parts += ["<h2>Tasks</h2>", _dag(page.tasks)]
    if page.plan:
        parts += ["<h2>Plan</h2>", _plan(page.plan)]
    if page.links:
        items = "".join(
            f'<li><a href="{e(href)}">{e(label)}</a></li>' for label, href in page.links
        )
        parts += ["<h2>Files</h2>", f"<ul>{items}</ul>"]
    parts += [f"<p class='note'>{e(n)}</p>" for n in page.notes]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{e(page.title)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(parts)}</body></html>"
    )


def _dag(tasks: Sequence[PageTask]) -> str:
    blocks = []
    for group in task_groups(tasks):
        rows = "".join(_row(t) for t in group)
        table = f"<table>{rows}</table>"
        if group[0].backbone is not None:
            label = " + ".join(dict.fromkeys(t.name for t in group))
            blocks.append(
                f'<div class="fanout"><div class="loop">for each backbone: {html.escape(label)}'
                f"</div>{table}</div>"
            )
        else:
            blocks.append(f'<div class="step">{table}</div>')
    return '<div class="dag">' + '<div class="arrow">&#8595;</div>'.join(blocks) + "</div>"


def _plan(plan: dict[str, Any]) -> str:
    """The time limit, predicted against actual seconds, and each member planned and run."""
    e = html.escape
    predicted = plan.get("predicted") or {}
    within = "within" if plan.get("within_limit") else "over"
    head = (
        f"<p>Time limit {e(duration(plan['minutes'] * 60))}: the run took "
        f"{e(duration(plan.get('run_seconds')))} ({within} the limit); after "
        f"{e(duration(predicted.get('spent')))} before the plan, it predicted "
        f"{e(duration(predicted.get('total')))} more (training "
        f"{e(duration(predicted.get('train')))}, ensemble {e(duration(predicted.get('ensemble')))}, "
        f"evaluation {e(duration(predicted.get('evaluate')))}); "
        f"{e(str(plan.get('views')))} test-time view(s).</p>"
    )
    columns = ("member", "backbone", "seed", "epochs", "ran", "predicted", "actual", "deadline")
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{e(str(v))}</td>"
            for v in (
                m["index"],
                m["backbone"],
                m["seed"],
                m["epochs"],
                "" if m.get("actual_epochs") is None else m["actual_epochs"],
                duration(m.get("predicted_seconds")),
                duration(m.get("actual_seconds")),
                "stopped it" if m.get("stopped_by_deadline") else "",
            )
        )
        + "</tr>"
        for m in plan.get("members", [])
    )
    header = "".join(f"<th>{c}</th>" for c in columns)
    return f'{head}<table class="plan"><tr>{header}</tr>{rows}</table>'


def _row(task: PageTask) -> str:
    e = html.escape
    name = e(task.name)
    if task.backbone:
        name += f' <span class="backbone">{e(task.backbone)}</span>'
    links = [
        f'<a href="{e(href)}">{label}</a>'
        for label, href in (
            ("report", task.report),
            ("log", task.log),
            ("tensorboard", task.tensorboard),
        )
        if href
    ]
    return (
        f'<tr><td class="name">{name}</td>'
        f'<td class="st"><span class="state {_state_class(task.state)}">{e(task.state)}</span></td>'
        f'<td class="time">{e(duration(task.seconds))}</td>'
        f'<td class="headline">{e(task.headline)}</td>'
        f'<td class="links">{" &middot; ".join(links)}</td></tr>'
    )


def _state_class(state: str) -> str:
    return re.sub(r"[^a-z]+", "-", state.lower()).strip("-") or "unknown"


def _number(value: float) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- Markdown


def markdown_page(text: str, title: str) -> str:
    """A Markdown document (the model card) as a standalone HTML page."""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{markdown_to_html(text)}</body></html>"
    )


def markdown_to_html(text: str) -> str:
    """The Markdown the model cards use: headings, paragraphs, lists, pipe tables, bold, code.

    Small on purpose: the cards are generated by hemaflow, so this needs no Markdown library.
    """
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            i += 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i].strip())
                i += 1
            out.append(_table(block))
        elif re.match(r"^\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"^\s*[-*]\s+", lines[i]):
                items.append(re.sub(r"^\s*[-*]\s+", "", lines[i].rstrip()))
                i += 1
            out.append("<ul>" + "".join(f"<li>{_inline(t)}</li>" for t in items) + "</ul>")
        else:
            para = []
            while (
                i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||\s*[-*]\s)", lines[i])
            ):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)


def _table(rows: list[str]) -> str:
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    body = [r for r in cells if not all(re.fullmatch(r":?-{3,}:?", c) for c in r)]
    if not body:
        return ""
    head = "".join(f"<th>{_inline(c)}</th>" for c in body[0])
    rest = "".join(
        "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rest}</tbody></table>"


def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.3em 0}td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px}
th{background:#f3f3f3}code{background:#f3f3f3;padding:0 3px}
.synthetic{background:#fff3cd;border:1px solid #e0b000;padding:.6em;margin:1em 0;font-weight:bold}
.cards{display:flex;flex-wrap:wrap;gap:.6em}.card{border:1px solid #ccc;border-radius:6px;padding:.5em 1em;min-width:7em}
.card .value{font-size:1.5em;font-weight:bold}.card .key{color:#555;font-size:.85em}
.dag{display:flex;flex-direction:column;align-items:flex-start}
.dag table{width:100%;table-layout:fixed}.step,.fanout{width:64em;box-sizing:border-box}
.fanout{border-left:4px solid #7aa7d8;padding-left:.6em}.loop{color:#36c;font-size:.85em;margin:.2em 0}
.arrow{color:#999;margin:.1em 0 .1em 1.5em}
td.name{width:15em;font-weight:600}td.st{width:6.5em}td.time{width:6em;text-align:right}td.links{width:13em}
.backbone{font-weight:normal;color:#36c}
.state{border-radius:3px;padding:0 5px;font-size:12px;color:#fff;background:#888}
.state.succeeded{background:#2e7d32}.state.cached{background:#00796b}.state.failed{background:#c62828}
.state.running{background:#ef6c00}
.note{color:#555;font-size:.9em}
"""
