"""Toolkit overhead per call: OnnxRuntimeRunner.infer() against a bare session.run() on the same session.

Target (issue 2): at most 5% or 50 us over bare session.run. Both are measured interleaved, in rounds,
with gan_deploy.core.timing.measure, so machine noise hits them alike; the median over rounds is reported.

    python benchmarks/overhead.py [--checkpoint models/digits_dcgan.safetensors] [--rounds 7]
"""
from __future__ import annotations

import argparse
import json
import statistics

from gan_deploy.artifacts.load import load_artifact
from gan_deploy.backends import make_runner
from gan_deploy.core.latents import latents_range
from gan_deploy.core.timing import measure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--batch-sizes", default="1,256")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    art = load_artifact(a.checkpoint)
    runner = make_runner("onnxruntime", art).activate()
    sess, in_name, out_names = runner.session, runner.spec.input_name, [runner.spec.output_name]
    results = []
    for b in (int(x) for x in a.batch_sizes.split(",")):
        z = latents_range(0, 0, b, art.spec.latent_dim)
        iters = 300 if b == 1 else 20
        bare, ours = [], []
        for _ in range(a.rounds):
            bare.append(measure(lambda: sess.run(out_names, {in_name: z}), b, warmup=3, iters=iters).p50_ms)
            ours.append(measure(lambda: runner.infer(z), b, warmup=3, iters=iters).p50_ms)
        mb, mo = statistics.median(bare), statistics.median(ours)
        row = {"batch_size": b, "bare_session_run_p50_ms": mb, "runner_infer_p50_ms": mo,
               "overhead_us": (mo - mb) * 1e3, "overhead_pct": 100 * (mo - mb) / mb}
        results.append(row)
        print(f"batch {b:>4}: bare session.run {mb:.4f} ms, runner.infer {mo:.4f} ms -> overhead "
              f"{row['overhead_us']:+.1f} us ({row['overhead_pct']:+.2f}%)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
