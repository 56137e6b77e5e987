"""`python -m othink_mr1.report SOURCE`: the paper's tables and figures from finished runs.

    python -m othink_mr1.report outputs/sweeps/paper_grid             # a sweep directory
    python -m othink_mr1.report outputs/sweeps/paper_grid --paper     # the paper's numbers beside ours
    python -m othink_mr1.report outputs/sweeps/paper_grid --intervals # 95% intervals; the claims, paired by seed
    python -m othink_mr1.report wandb-offline:outputs/sweeps/smoke    # the same sweep's wandb offline runs
    python -m othink_mr1.report wandb:ENTITY/PROJECT --group paper_grid --out reports/paper_grid

Prints the tables as Markdown and writes them, with CSV, LaTeX, runs.csv and PNG figures, to --out
(default: SOURCE/report for a directory, outputs/reports/<project>[-<group>] for wandb). Only the
report's own files are replaced on a re-run; nothing else in the folder is touched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..utils.errors import ConfigError
from .render import Table, csv_text, latex_document, markdown_document
from .runs import RunResult, load_source
from .tables import IncomparableRunsError, build_tables


def default_out(source: str, group: str | None) -> Path:
    if source.startswith("wandb:"):
        name = source[len("wandb:"):].replace("/", "_") + (f"-{group}" if group else "")
        return Path("outputs") / "reports" / name
    folder = Path(source.split(":", 1)[1] if source.startswith("wandb-offline:") else source)
    return folder / ("report_wandb" if source.startswith("wandb-offline:") else "report")


def write_report(tables: dict[str, Table], runs: list[RunResult], out: Path, figures: bool = True) -> list[Path]:
    """tables.md, tables.tex, <table>.csv for each table, and the figures; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "tables.md", out / "tables.tex"]
    written[0].write_text(markdown_document(tables.values()))
    written[1].write_text(latex_document(tables.values()))
    for name, table in tables.items():
        (out / f"{name}.csv").write_text(csv_text(table))
        written.append(out / f"{name}.csv")
    if "forgetting_vs_kl" in tables:  # the scatter's points, one row each
        from .frontier import drift_points_csv

        written.append(out / "drift_points.csv")
        written[-1].write_text(drift_points_csv(runs))
    if figures:
        from .figures import write_figures

        written += write_figures(runs, out)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m othink_mr1.report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a sweep directory, wandb-offline:PATH, or wandb:ENTITY/PROJECT")
    parser.add_argument("--group", help="only runs of this wandb group / sweep (e.g. paper_grid)")
    parser.add_argument("--paper", action="store_true", help="add the paper's published numbers and the difference")
    parser.add_argument("--out", type=Path, help="folder for the written report (default: SOURCE/report)")
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    parser.add_argument("--intervals", action="store_true",
                        help="95%% intervals over seeds, and the paper's claims as paired differences with a verdict")
    args = parser.parse_args(argv)
    try:
        runs = load_source(args.source, group=args.group, with_curves=not args.no_figures)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or default_out(args.source, args.group)
    try:
        tables = build_tables(runs, paper=args.paper, intervals=args.intervals)
    except IncomparableRunsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    written = write_report(tables, runs, out, figures=not args.no_figures)
    print(markdown_document(tables.values()))
    print(f"[report] {len(runs)} runs; wrote {len(written)} files to {out}: " + ", ".join(p.name for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
