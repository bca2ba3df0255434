"""What train() returns: TrainResult and its printed summary."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gan_deploy.train.evaluator import quality_text


@dataclass
class TrainResult:
    out: Path
    checkpoint: Path  # out/generator.safetensors (the EMA generator)
    samples: Path | None  # the last sample grid
    dataset: str  # Dataset.describe()
    steps: int  # total steps trained (including those before a resume)
    start_step: int  # 0, or the step this invocation resumed from
    wall_time_s: float  # this invocation's training loop
    images_per_s: float  # real images per second over this invocation, all processes together
    d_loss: float
    g_loss: float
    world_size: int
    device: str
    params_g: int
    params_d: int
    rank_sha256: list[str] = field(default_factory=list)  # per rank: sha256 of its G and D parameters
    quality: dict[str, Any] | None = None  # the final eval record (fd, fd_spread, precision, recall, n ...); None if off

    def summary(self) -> str:
        m, s = divmod(self.wall_time_s, 60)
        resumed = f" (resumed at {self.start_step})" if self.start_step else ""
        procs = f" x {self.world_size} processes" if self.world_size > 1 else ""
        lines = [
            (f"Trained {self.steps} steps{resumed} in {int(m)}m{s:04.1f}s on {self.device}{procs}: "
             f"{self.images_per_s:.0f} images/s, final d_loss {self.d_loss:.3f} g_loss {self.g_loss:.3f}"),
            f"  data:      {self.dataset}",
            f"  generator: {self.checkpoint} (+ .json; EMA weights, {count_text(self.params_g)} parameters)",
        ]
        if self.samples:
            lines.append(f"  samples:   {self.samples}")
        if self.quality:
            q = self.quality
            lines.append(f"  quality:   {quality_text(q)} at step {q['step']} ({q['n']} generated vs {q['n_reference']} "
                         f"training images; compare only at the same n; full score: gan-deploy eval -c {self.checkpoint})")
        lines += [f"  metrics:   {self.out / 'metrics.jsonl'}",
                  f"Next: gan-deploy export -c {self.checkpoint}"]
        return "\n".join(lines)


def count_text(n: int) -> str:
    """A parameter count for people: 0.92M, 12.3k."""
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}k"
