"""Plot FD vs training step from the "eval" records of `gan-deploy train --eval-every N` runs.

    python benchmarks/training_curve.py /tmp/curve/metrics.jsonl --extra "separate 150-step run=/tmp/short150/metrics.jsonl" \
        --out docs/training_curve.png

The first file is the curve (FD ± bootstrap spread at every eval step, log scale: the untrained generator at
step 0 is ~100x the trained one). Each --extra run adds its final score as a labelled point. Also prints the
numbers as a Markdown table, so the plot and the docs come from the same records.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def eval_records(path: Path) -> list[dict[str, Any]]:
    from gan_deploy.train.loop import iter_metrics

    recs = [r for r in iter_metrics(path) if r.get("event") == "eval"]
    if not recs:
        raise SystemExit(f"{path}: no eval records (was the run trained with --eval-every 0?)")
    return recs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("curve", type=Path, help="metrics.jsonl of the run to plot")
    ap.add_argument("--extra", action="append", default=[], metavar="LABEL=METRICS",
                    help="another run whose final score is drawn as one labelled point")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "training_curve.png")
    ap.add_argument("--title", default="gan-deploy train (defaults): FD vs training step")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    from gan_deploy.core.fileio import atomic_path

    curve = eval_records(args.curve)
    steps = [r["step"] for r in curve]
    fd = [r["fd"] for r in curve]
    err = [r["fd_spread"] or 0.0 for r in curve]
    n, n_ref = curve[-1]["n"], curve[-1]["n_reference"]

    print("| step | FD ± spread | precision | recall |")
    print("|---:|---|---:|---:|")
    for r in curve:
        print(f"| {r['step']} | {r['fd']:.1f} ± {r['fd_spread'] or 0:.1f} | {r['precision']:.3f} | {r['recall']:.3f} |")

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.errorbar(steps, fd, yerr=err, marker="o", ms=4, capsize=3, label=f"{args.curve.parent.name}: EMA generator")
    for label_path in args.extra:
        label, _, path = label_path.partition("=")
        last = eval_records(Path(path))[-1]
        ax.errorbar([last["step"]], [last["fd"]], yerr=[last["fd_spread"] or 0.0], marker="s", ms=6, capsize=3,
                    linestyle="none", label=f"{label}: final FD {last['fd']:.0f}")
        print(f"{label}: step {last['step']}: FD {last['fd']:.1f} ± {last['fd_spread'] or 0:.1f}, "
              f"precision {last['precision']:.3f}, recall {last['recall']:.3f}")
    ax.annotate(f"untrained: {fd[0]:.0f}", (steps[0], fd[0]), textcoords="offset points", xytext=(8, -4), fontsize=8)
    ax.annotate(f"{fd[-1]:.0f} ± {err[-1]:.0f}", (steps[-1], fd[-1]), textcoords="offset points", xytext=(-10, 10),
                fontsize=8, ha="right")
    ax.set_yscale("log")
    ax.set_xlabel("training step (generator updates, batch 64)")
    ax.set_ylabel(f"FD (digits-classifier features; n {n} vs {n_ref}, log)")
    ax.set_title(args.title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, format="png")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
