"""``report.md`` and ``report.html`` from the run files alone.

Input: ``<out>/manifest.json`` (written by ``batchnorm reproduce``: which run folders make
up each experiment's groups) and each run's ``config.json``, ``metrics.jsonl`` and
``summary.json``. Nothing is trained here. The figures are redrawn into ``<out>/figures/``;
the HTML report inlines them as base64 PNG so it is one self-contained file.
"""

from __future__ import annotations

import base64
import html
import json
import platform
from pathlib import Path
from typing import Any

from .suite import EXPERIMENTS
from .train import read_run

__all__ = ["write_report", "load_manifest"]


def load_manifest(out: str | Path) -> dict[str, Any]:
    path = Path(out) / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: run `batchnorm reproduce --out {out}` first")
    return json.loads(path.read_text())


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return (
        f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s"
        if s >= 3600
        else f"{s // 60}m {s % 60:02d}s"
    )


def _experiment_result(out: Path, exp, entry: dict[str, Any]) -> dict[str, Any]:
    groups: dict[str, list[dict]] = {}
    missing = []
    for label, names in entry["groups"].items():
        runs = []
        for name in names:
            p = out / "runs" / name
            if (p / "summary.json").is_file():
                runs.append(read_run(p))
            else:
                missing.append(name)
        groups[label] = runs
    res: dict[str, Any] = {"exp": exp, "groups": groups, "missing": missing, "figure": None}
    unique = {r["path"].name: r for runs in groups.values() for r in runs}
    res["wall_s"] = sum(r["summary"]["wall_s"] for r in unique.values())
    res["runs"] = len(unique)
    res["seeds"] = sorted({r["config"].seed for r in unique.values()})
    if any(not runs for runs in groups.values()):
        res["held"], res["lines"] = (
            None,
            [f"{len(missing)} run(s) not finished: {', '.join(missing[:4])}"],
        )
        return res
    try:
        res["held"], res["lines"] = exp.verdict(groups)
    except Exception as e:  # a verdict must never hide the rest of the report
        res["held"], res["lines"] = None, [f"could not evaluate the rule: {type(e).__name__}: {e}"]
    if missing:  # every group has at least one finished run: a partial result, said so
        res["lines"].insert(
            0,
            f"PARTIAL: {len(missing)} of {len(missing) + res['runs']} runs not finished "
            f"(interrupted); the numbers below use the finished seeds only",
        )
    try:
        res["figure"] = exp.plot(groups, out / "figures" / f"{exp.id}.png", exp)
    except Exception as e:
        res["lines"].append(f"figure failed: {type(e).__name__}: {e}")
    return res


def _verdict_word(
    held: bool | None, partial: bool = False, quick: bool = False, capped: bool = False
) -> str:
    if capped:  # --steps-cap: every run cut short, the numbers decide nothing
        return "NOT DECIDED (--steps-cap)" + (" (partial)" if partial else "")
    word = {True: "HELD", False: "NOT HELD", None: "UNDECIDED"}[held]
    if held is not None and quick:
        word += " (reduced protocol)"
    return word + (" (partial)" if partial and held is not None else "")


def _runs_links(r: dict[str, Any]) -> list[str]:
    """One line per group: links to each run's own figure (curves.png)."""
    lines = []
    for label, runs in r["groups"].items():
        links = ", ".join(
            f"[seed {run['config'].seed}](runs/{run['path'].name}/curves.png)" for run in runs
        )
        lines.append(f"{label.replace('|', ', ')}: {links or 'not finished'}")
    return lines


def _header_times(manifest: dict[str, Any], runs_wall_s: float) -> str:
    workers = manifest.get("workers")
    runs = _fmt_s(manifest.get("runs_wall_s", runs_wall_s))
    if manifest.get("report_only"):
        return f"report rebuilt from the run files without training; the runs' own times sum to {runs}."
    trained, reused = manifest.get("trained", 0), manifest.get("reused", 0)
    if "finished" not in manifest:  # the invocation that wrote the manifest was interrupted
        return (
            f"the invocation started {manifest.get('started', '?')} with {workers or '?'} worker "
            f"process(es) was interrupted"
            + (
                f" after {_fmt_s(manifest['wall_s'])}, having trained {trained} run(s)"
                if "wall_s" in manifest
                else ""
            )
            + f"; this report uses the runs finished so far, whose own wall times sum to {runs}."
        )
    return (
        f"wall time of this invocation {_fmt_s(manifest.get('wall_s', 0))} with "
        f"{workers or '?'} worker process(es) of {manifest.get('threads', '?')} thread(s): "
        f"{trained} run{'s' if trained != 1 else ''} trained now"
        + (
            f", {reused} reused (finished by an earlier invocation, not timed here)"
            if reused
            else ""
        )
        + f"; the runs' own wall times sum to {runs} (runs in parallel overlap)."
    )


def write_report(out: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out``; return their paths.

    Raises:
        ValueError: ``out`` holds no manifest.
    """
    out = Path(out)
    manifest = load_manifest(out)
    known = {e.id: e for e in EXPERIMENTS}
    results = [
        _experiment_result(out, known[eid], entry)
        for eid, entry in manifest["experiments"].items()
        if eid in known
    ]
    quick = manifest.get("quick", False)
    capped = bool(manifest.get("steps_cap"))
    note = ""
    if capped:
        note = (
            f"**Smoke run** (`--steps-cap {manifest['steps_cap']}`: every run cut to at most that "
            "many steps): the numbers below test the pipeline, not the claims, so no verdict is given. "
        )
    elif quick:
        note = (
            "**Quick run** (reduced protocols, for a first look and CI): each verdict holds for the "
            "reduced protocol stated with it, not for the articles' protocols. "
        )
    head = [
        f"# Batch normalization on {manifest.get('dataset', 'mnist').upper()}: the articles' claims, reproduced",
        "",
        note
        + f"Made by `{manifest.get('command', 'batchnorm reproduce')}` on {manifest.get('machine', platform.node())}, "
        f"torch {manifest.get('torch', '?')}; "
        + _header_times(
            manifest,
            sum(
                {
                    run["path"].name: run["summary"]["wall_s"]
                    for r in results
                    for runs in r["groups"].values()
                    for run in runs
                }.values()
            ),
        ),
        "",
        "Each verdict is computed from the run files by the stated rule. Final accuracies are on all "
        "the test images (10,000 for MNIST); curves during training use the number of test images "
        "their axis states; the small-batch checks of the inference experiment use the first 1,000 "
        "test images and the single-image check the first 200. 'mean ± std (n=seeds)'. Times are per "
        "experiment, summed over its runs (a run shared by two experiments counts in both).",
        "",
        "| experiment | claim held? | runs | seeds | time |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        head.append(
            f"| [{r['exp'].title}](#{r['exp'].id}) | "
            f"{_verdict_word(r['held'], bool(r['missing']), quick, capped)} | {r['runs']} | "
            f"{len(r['seeds'])} | {_fmt_s(r['wall_s'])} |"
        )
    md, parts = list(head), []
    for r in results:
        e = r["exp"]
        proto = e.protocol.get(quick, e.protocol.get(False, ""))
        sec = [
            "",
            f'<a id="{e.id}"></a>',
            f"## {e.title}",
            "",
            f"**Claim** ({e.source}): {e.claim}",
            "",
            f"**Measured**: {e.measured}",
            "",
            f"**Protocol**: {proto}." if proto else "",
            "",
            f"**Rule**: {e.rule}",
            "",
            f"**Result: {_verdict_word(r['held'], bool(r['missing']), quick, capped)}** "
            f"({r['runs']} runs, {_fmt_s(r['wall_s'])})",
            "",
        ]
        sec += [f"- {line}" for line in r["lines"]]
        runs_sec = ["", "**Runs** (each run's own curves):", ""]
        runs_sec += [f"- {line}" for line in _runs_links(r)]
        md += sec
        if r["figure"]:
            md += ["", f"![{e.title}](figures/{Path(r['figure']).name})"]
        md += runs_sec
        parts.append((sec, r["figure"], runs_sec))
    md += [
        "",
        "## Run folders",
        "",
        "Each run folder under `runs/` holds `config.json` (every field; rerun one with "
        "`batchnorm train --preset runs/<name>/config.json`), `metrics.jsonl` (one line per "
        "evaluation), `summary.json` (final metrics under every evaluation statistic, times) and "
        "`curves.png`.",
    ]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    html_path = out / "report.html"
    html_path.write_text(_html(head, parts, md[-3:]))
    return md_path, html_path


def _inline(text: str) -> str:
    """The little Markdown the report uses: **bold**, `code`, [text](#anchor)."""
    import re

    t = html.escape(text, quote=False)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    t = re.sub(r"\[(.+?)\]\((#[\w-]+|runs/[\w./-]+)\)", r'<a href="\2">\1</a>', t)
    return t


def _lines_html(lines: list[str]) -> str:
    out, in_list, in_table = [], False, False
    for line in lines:
        if line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline(line[2:])}</li>")
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= {"-"}:
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("# "):
            out.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("## "):
            out.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("<a id="):
            out.append(line)
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_list:
        out.append("</ul>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)


def _html(
    head: list[str], parts: list[tuple[list[str], Path | None, list[str]]], tail: list[str]
) -> str:
    body = [_lines_html(head)]
    for sec, fig, runs_sec in parts:
        body.append(_lines_html(sec))
        if fig:
            data = base64.b64encode(Path(fig).read_bytes()).decode()
            body.append(
                f'<img alt="{html.escape(Path(fig).stem)}" src="data:image/png;base64,{data}">'
            )
        body.append(_lines_html(runs_sec))
    body.append(_lines_html(tail))
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "line-height:1.45;color:#222}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em}"
        "code{background:#f3f3f3;padding:0 .2em}h2{border-top:1px solid #ddd;padding-top:.8em}"
    )
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>batchnorm: reproduction report</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
