"""Reports over runs and sweeps: configurations, a summary table, figures, Markdown and HTML.

``build_report(paths, out)`` reads every run directory under ``paths`` (runs, sweeps, folders of
runs), groups runs by their resolved scenario without the seed, and writes into ``out``:
``report.md`` (figures linked), ``report.html`` (one file, figures inlined), ``summary.csv``,
``summary.tex`` and ``figures/*.png``. Paths that cannot be used are listed with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from fedsim.errors import UserError
from fedsim.reporting import render
from fedsim.reporting.runs import Run, Skipped, load_runs
from fedsim.reporting.summary import Configuration, configurations, format_value, summarise

__all__ = ["ReportResult", "Skipped", "build_report"]


@dataclass(frozen=True)
class ReportResult:
    """What ``build_report`` wrote and what it read."""

    out: Path
    markdown: Path
    html: Path
    summary_csv: Path
    summary_tex: Path
    figures: list[Path]
    runs: list[Run]
    configurations: list[Configuration]
    skipped: list[Skipped]
    target: float | None


def build_report(
    paths: Iterable[Path | str], out: Path | str, target: float | None = None
) -> ReportResult:
    """Write a report on the runs under ``paths`` into ``out``; UserError if none is usable.

    ``target``: the accuracy for "rounds to target" (default 0.9 × the best configuration's
    mean final accuracy).
    """
    out = Path(out)
    given = [Path(p) for p in paths]
    runs, skipped = load_runs(given, exclude=[out])
    if not runs:
        reasons = "\n".join(f"  {s.path}: {s.reason}" for s in skipped) or "  no paths given"
        raise UserError(f"no usable run under the given paths:\n{reasons}")
    if target is not None and not 0.0 < target <= 1.0:
        raise UserError(f"--target is an accuracy in (0, 1], got {target}")

    configs, shared = configurations(runs)
    summary = summarise(configs, target)
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)

    ids = [f"C{i + 1}" for i in range(len(configs))]
    numbers = summary.numbers.copy()
    numbers.insert(0, "id", ids)
    numbers.to_csv(out / "summary.csv", index=False)
    table = summary.table.copy()
    table.insert(0, "id", ids)
    latex = table.to_latex(index=False, escape=True)
    (out / "summary.tex").write_text(latex.replace("±", r"$\pm$").replace("—", "--"))

    from fedsim.reporting import figures  # matplotlib: only when a report is built

    written: list[tuple[Path, str]] = []
    for stem, caption, make in figures.FIGURES:
        fig = make(configs)
        if fig is not None:
            written.append((figures.save(fig, out / "figures" / f"{stem}.png"), caption))

    blocks = _blocks(given, runs, configs, ids, shared, table, summary.target, written, skipped)
    (out / "report.md").write_text(render.markdown(blocks, out))
    (out / "report.html").write_text(render.page(blocks, "fedsim report"))
    return ReportResult(
        out=out,
        markdown=out / "report.md",
        html=out / "report.html",
        summary_csv=out / "summary.csv",
        summary_tex=out / "summary.tex",
        figures=[path for path, _ in written],
        runs=runs,
        configurations=configs,
        skipped=skipped,
        target=summary.target,
    )


def _blocks(
    given: list[Path],
    runs: list[Run],
    configs: list[Configuration],
    ids: list[str],
    shared: dict[str, object],
    table: pd.DataFrame,
    target: float | None,
    written: list[tuple[Path, str]],
    skipped: list[Skipped],
) -> list[render.Block]:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[render.Block] = [
        render.Heading("fedsim report", 1),
        render.Paragraph(
            f"{len(runs)} run(s) in {len(configs)} configuration(s) from "
            f"{', '.join(str(p) for p in given)}; {len(skipped)} path(s) skipped. Built {when}."
        ),
        render.Heading("Summary"),
        render.Paragraph(
            "Configurations are runs whose resolved scenarios agree except for seed and name, "
            "labelled by the keys that differ between configurations. Mean ± sample std over "
            "seeds; accuracy is the server's central test accuracy."
            + (
                f" Rounds to target: the first round with accuracy ≥ {target:.3f}."
                if target is not None
                else ""
            )
        ),
        render.Table(table),
    ]
    if any(not r.complete for r in runs):
        blocks.append(
            render.Paragraph(
                "Incomplete runs (killed or failed before their last round) are drawn in the "
                "curves; the table uses a configuration's complete runs when it has any."
            )
        )
    if written:
        blocks.append(render.Heading("Figures"))
        blocks += [render.Image(path, caption) for path, caption in written]

    blocks.append(render.Heading("Runs"))
    config_of = {id(r): cid for cid, c in zip(ids, configs, strict=True) for r in c.runs}
    blocks.append(
        render.Table(
            pd.DataFrame(
                [
                    {
                        "configuration": config_of[id(r)],
                        "run": str(r.path),
                        "seed": r.seed,
                        "status": r.status,
                        "rounds": f"{r.rounds_done} of {r.rounds_planned}",
                        "wall time (s)": "—" if r.wall_time_s is None else f"{r.wall_time_s:.1f}",
                        "notes": "; ".join(r.notes),
                    }
                    for r in runs
                ]
            )
        )
    )
    if shared:
        blocks.append(render.Heading("Settings shared by all configurations"))
        blocks.append(
            render.Table(
                pd.DataFrame(
                    {"key": list(shared), "value": [format_value(v) for v in shared.values()]}
                )
            )
        )
    if skipped:
        blocks.append(render.Heading("Skipped"))
        blocks.append(
            render.Table(
                pd.DataFrame(
                    {"path": [str(s.path) for s in skipped], "reason": [s.reason for s in skipped]}
                )
            )
        )
    return blocks
