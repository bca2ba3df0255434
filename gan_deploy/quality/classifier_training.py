"""Training the digits feature classifier that the quality score ships (deterministic on CPU)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from gan_deploy.core.errors import GanDeployError
from gan_deploy.core.fileio import atomic_path, atomic_write_text, sha256_file
from gan_deploy.quality.evaluate import _digits_arrays
from gan_deploy.quality.features import CLASSIFIER_FORMAT, CLASSIFIER_FORMAT_VERSION, INPUT_SIZE, _net_class, _one_torch_thread

# -- training the feature classifier ---------------------------------------------------------------------


def _shift_batch(x, max_shift: int, gen):
    """Random translations of up to `max_shift` pixels, filling with background (-1): vectorized crop of a
    padded batch. Generated digits are rarely centred exactly like the data, and the features must not care."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    oy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # [N, H, 1]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # [N, 1, W]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


# Longer than the ~80-line guide on purpose: the classifier's whole recipe (split, loop, held-out accuracy, and the
# config written beside the weights) reads top to bottom in one place, as the trainer does.
# over 80 lines: one training recipe read top to bottom, as nanoGPT's loop (split, model, epochs, held-out
# accuracy, atomic write); cut into helpers, its order and its determinism would be harder to check.
def train_feature_classifier(out: str | Path = "models/digits_classifier.safetensors", epochs: int = 15, width: int = 16, feature_dim: int = 128,
                             batch_size: int = 64, lr: float = 2e-3, seed: int = 0, test_fraction: float = 0.2,
                             max_shift: int = 3, log: Any = print) -> dict[str, Any]:
    """Train the digits feature classifier on CPU and write `<out>.safetensors` + `<out>.json` atomically.

    A stratified `test_fraction` of the digits is held out and only used to report accuracy. Deterministic
    for a given seed, torch version and thread count. Returns the JSON config written.
    """
    import platform

    import torch
    from safetensors.torch import save_file
    from sklearn.model_selection import train_test_split

    from gan_deploy.core.timing import Stopwatch

    if epochs < 1 or width < 1 or feature_dim < 2 or batch_size < 1 or not 0.0 < test_fraction < 1.0 or max_shift < 0:
        raise GanDeployError("bad classifier training settings", f"epochs={epochs} width={width} feature_dim={feature_dim} batch_size={batch_size} "
                             f"test_fraction={test_fraction} max_shift={max_shift}", expected="epochs, width, batch_size >= 1, feature_dim >= 2, 0 < test_fraction < 1, max_shift >= 0")
    out = Path(out).with_suffix(".safetensors")
    images, labels = _digits_arrays()
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=test_fraction, random_state=seed, stratify=labels)
    x_train, y_train = torch.from_numpy(images[idx_train]), torch.from_numpy(labels[idx_train])
    x_test, y_test = torch.from_numpy(images[idx_test]), torch.from_numpy(labels[idx_test])

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = _net_class()(width, feature_dim, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    loss_fn = torch.nn.CrossEntropyLoss()

    def accuracy(x, y) -> float:
        model.eval()
        with torch.inference_mode():
            pred = torch.cat([model(x[s:s + 512]).argmax(1) for s in range(0, len(x), 512)])
        model.train()
        return float((pred == y).float().mean())

    with _one_torch_thread():
        with Stopwatch() as sw:
            model.train()
            for epoch in range(epochs):
                perm = torch.randperm(len(x_train), generator=gen)
                total = 0.0
                for s in range(0, len(perm), batch_size):
                    b = perm[s:s + batch_size]
                    xb = _shift_batch(x_train[b], max_shift, gen) if max_shift else x_train[b]
                    loss = loss_fn(model(xb), y_train[b])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(b)
                if log and (epoch == epochs - 1 or epoch % 5 == 4):
                    log(f"epoch {epoch + 1}/{epochs}  loss {total / len(x_train):.4f}  held-out accuracy {accuracy(x_test, y_test):.4f}")
            model.eval()
        test_acc = accuracy(x_test, y_test)
        # the same held-out images shifted at random: how much the features rely on exact centring
        shifted_acc = accuracy(_shift_batch(x_test, max_shift or 2, torch.Generator().manual_seed(seed + 1)), y_test)
        model.eval()

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": CLASSIFIER_FORMAT})
    cfg: dict[str, Any] = {
        "format": CLASSIFIER_FORMAT,
        "format_version": CLASSIFIER_FORMAT_VERSION,
        "architecture": {
            "name": "DigitsFeatureNet", "width": width, "feature_dim": feature_dim, "classes": 10,
            "layers": f"conv3x3({width})-relu-maxpool, conv3x3({2 * width})-relu-maxpool, conv3x3({4 * width})-relu-maxpool, "
                      f"flatten(4x4), linear({feature_dim}) = features (pre-ReLU), relu, dropout(0.2), linear(10)",
        },
        "feature_dim": feature_dim,
        "feature_layer": "penultimate linear layer, before its ReLU",
        "input": {"shape": [1, INPUT_SIZE, INPUT_SIZE], "value_range": [-1.0, 1.0], "channels": "gray",
                  "other inputs": "RGB -> gray (ITU-R 601 luma), other sizes -> bilinear resize to 32x32"},
        "data": {"dataset": "digits", "source": "sklearn.datasets.load_digits (8x8, 0..16) -> /16 -> bilinear x4 -> [-1, 1]",
                 "n_train": int(len(idx_train)), "n_test": int(len(idx_test)), "split": f"stratified, random_state={seed}"},
        "accuracy": {"held_out": round(test_acc, 4), f"held_out_shifted_{max_shift or 2}px": round(shifted_acc, 4)},
        "train": {"epochs": epochs, "batch_size": batch_size, "optimizer": "AdamW(weight_decay=1e-4) + OneCycleLR",
                  "lr": lr, "seed": seed, "augmentation": f"random shifts up to {max_shift} px, background fill -1",
                  "seconds": round(sw.seconds, 1), "torch": torch.__version__, "threads": 1,
                  "machine": platform.machine()},
        "retrain": "python -m gan_deploy.quality.features --train-classifier",
        "weights_sha256": sha256_file(out),
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if log:
        log(f"held-out accuracy {test_acc:.4f} ({len(idx_test)} images), shifted {shifted_acc:.4f}; "
            f"{sw.seconds:.1f} s; wrote {out} and {out.with_suffix('.json').name}")
    return cfg


