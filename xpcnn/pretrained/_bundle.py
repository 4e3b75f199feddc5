"""Maintainers' step: a training checkpoint in, a bundled network out.

``python -m xpcnn.pretrained._bundle NAME CHECKPOINT`` writes ``NAME.npz`` beside
this module: the checkpoint's parameters and buffers (not its optimizer state, its
dropout generators or its per-step losses), its model configuration, its run options
and its per-epoch history (``train_loss`` becomes the mean of each epoch's step
losses, the number the epoch line prints). It then records the new file's SHA-256
and the checkpoint's in ``PROVENANCE.json``, whose other fields (command, commit,
accuracy, ...) are written by hand from the training log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import load_checkpoint, save_checkpoint
from . import PROVENANCE_FILE

HERE = Path(__file__).resolve().parent
EPOCH_KEYS = ("train_acc", "test_acc", "epoch_seconds", "images_per_sec")


def bundle_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """What a bundled file keeps of a training checkpoint's metadata."""
    history = meta.get("history", {})
    epochs = len(history.get("test_acc", []))
    kept = {k: history[k] for k in EPOCH_KEYS if k in history}
    steps = np.asarray(history.get("train_loss", []), dtype=np.float64)
    if epochs and steps.size and steps.size % epochs == 0:
        kept["train_loss"] = [float(v) for v in steps.reshape(epochs, -1).mean(axis=1)]
    return {"model": meta["model"], "run": meta.get("run", {}), "history": kept}


def bundle(name: str, source: Path, folder: Path = HERE) -> Path:
    """Write ``folder/NAME.npz`` from checkpoint ``source`` and record both SHA-256s in
    ``folder/PROVENANCE.json`` (an entry for ``name`` must exist); returns the new file."""
    arrays, meta = load_checkpoint(source)
    kept = {k: v for k, v in arrays.items() if k.startswith(("params/", "buffers/"))}
    out = save_checkpoint(folder / f"{name}.npz", kept, bundle_meta(meta))
    record_file = folder / PROVENANCE_FILE
    records = json.loads(record_file.read_text(encoding="utf-8"))
    records[name].update(
        file=out.name,
        sha256=hashlib.sha256(out.read_bytes()).hexdigest(),
        source_sha256=hashlib.sha256(Path(source).read_bytes()).hexdigest(),
    )
    record_file.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xpcnn.pretrained._bundle", description=__doc__)
    p.add_argument("name", help="the entry of PROVENANCE.json (simple, deep)")
    p.add_argument("checkpoint", type=Path, help="the training run's checkpoint.npz")
    args = p.parse_args(argv)
    out = bundle(args.name, args.checkpoint)
    print(f"wrote {out} ({out.stat().st_size:,} bytes); {PROVENANCE_FILE} updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
