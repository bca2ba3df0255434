"""`python -m gan_deploy.quality --train-classifier`: retrain the digits feature classifier (a maintainer's tool)."""
from __future__ import annotations

from typing import Sequence

from gan_deploy.core.errors import GanDeployError
from gan_deploy.quality.classifier_training import train_feature_classifier


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m gan_deploy.quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-classifier", action="store_true", help="train the digits feature classifier and write it")
    ap.add_argument("--out", default="models/digits_classifier.safetensors",
                    help="where to write it (default: models/ here; copy both files to gan_deploy/assets/ to ship them)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--feature-dim", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.train_classifier:
        ap.print_help()
        return 2
    try:
        train_feature_classifier(args.out, epochs=args.epochs, width=args.width, feature_dim=args.feature_dim, seed=args.seed)
    except GanDeployError as e:
        print(f"Error: {e.one_line()}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
