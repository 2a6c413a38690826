"""A paper's claims checked on a benchmark's runs: each claim compares two settings, paired by
seed (or scene), and gets a verdict a reader can trust at a glance."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def paired_claims(
    by: pd.DataFrame, claims: Sequence[tuple[str, str, str]], metric: str, pairs: str = "seeds"
) -> str:
    """A Markdown table of ``claims`` (text, better setting, worse setting) on ``by`` (one row per
    seed, one column per setting): the difference's mean ± standard error, how many pairs agree
    in sign, and "holds" (or "reversed") when the mean is beyond 2 standard errors of 0, else
    "within noise". Claims whose settings did not run are left out."""
    lines = [f"| claim | Δ {metric} ± s.e. | {pairs} up | verdict |", "|---|---|---|---|"]
    for claim, better, worse in claims:
        if better not in by or worse not in by:
            continue
        diff = (by[better] - by[worse]).dropna()
        se = diff.std(ddof=1) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
        mean, up = diff.mean(), int((diff > 0).sum())
        verdict = "holds" if mean > 2 * se else "reversed" if mean < -2 * se else "within noise"
        lines.append(f"| {claim} | {mean:+.3f} ± {se:.3f} | {up}/{len(diff)} | {verdict} |")
    return "\n".join(lines)
