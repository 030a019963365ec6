"""Own data: amalgamation on what a user has, through the CLI, beside the built-in set with the same settings.

The transfer set is Fashion-MNIST's 60,000 train images written as PNGs into one flat folder, without labels,
at mixed sizes (cycling 28, 36, 22 and 28 pixels: the median, which sets the student's input, stays 28); the
evaluation set is the 10,000 test images as PNGs in class folders (``T-shirt_top/`` for ``T-shirt/top``). Both runs
use the fashion-mnist demo's teachers, soft-targets with no labels, 3 epochs, seed 0, through ``amalgam run``:

    amalgam run --teacher CNN --teacher VIT --data fashion-mnist --method soft-targets --epochs 3
    amalgam run --teacher CNN --teacher VIT --data FLAT_FOLDER --eval-data EVAL_FOLDER --method soft-targets ...
    amalgam run --teacher CNN --teacher VIT --data FLAT_FOLDER --method soft-targets ...   # label-free

Then the same student's accuracy on both is compared (the built-in run's images are the same pictures at 28 px,
so the difference is what resizing and PNG round trips cost), and the label-free metrics of the third run, which
has no labeled data at all. Writes ``bench/results/own-data.md`` and ``.json``.

    python -m bench.own_data [--samples 60000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from PIL import Image

from amalgam.cli import main as amalgam_cli
from amalgam.data import load_fashion_mnist
from amalgam.zoo import DEMOS

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (28, 36, 22, 28)


def write_pngs(root: Path, samples: int) -> tuple[Path, Path]:
    """The flat unlabeled transfer folder and the labeled evaluation folder, as PNG files."""
    data = load_fashion_mnist()
    flat, labeled = root / "flat", root / "eval"
    flat.mkdir(parents=True)
    for i in range(samples):
        picture = Image.fromarray(data.train.images[i, 0].numpy())
        size = SIZES[i % len(SIZES)]
        (picture if size == 28 else picture.resize((size, size), Image.BILINEAR)).save(flat / f"{i:05d}.png")
    for i in range(len(data.test)):
        folder = labeled / data.class_names[int(data.test.labels[i])].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.test.images[i, 0].numpy()).save(folder / f"{i:05d}.png")
    return flat, labeled


def run(argv: list[str], out: Path) -> dict:
    """One ``amalgam run``: its metrics.json, with the transfer size and the wall time."""
    started = time.perf_counter()
    assert amalgam_cli(["run", *argv, "--out", str(out), "--quiet"]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("history", None)
    return {**metrics, "transfer_samples": json.loads((run_dir / "run.json").read_text())["data"]["transfer_samples"],
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60000, help="transfer images written to the flat folder")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    teachers = [str(f) for f in DEMOS["fashion-mnist"].teacher_folders()]
    common = [flag for t in teachers for flag in ("--teacher", t)] + ["--method", "soft-targets", "--epochs",
                                                                       str(args.epochs)]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        flat, labeled = write_pngs(root, args.samples)
        written = time.perf_counter() - started
        builtin = run([*common, "--data", "fashion-mnist"], root / "builtin")
        own = run([*common, "--data", str(flat), "--eval-data", str(labeled)], root / "own")
        label_free = run([*common, "--data", str(flat)], root / "label-free")
    rows = {"built-in fashion-mnist": builtin, "flat unlabeled PNGs + eval folder": own}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "own-data.json").write_text(json.dumps({"rows": rows, "label_free": label_free,
                                                        "png_seconds": written, "samples": args.samples}, indent=2))
    lines = ["# Own data: a flat folder of unlabeled PNGs, through the CLI", "",
             f"Teachers: the fashion-mnist demo's; soft-targets, no labels, {args.epochs} epochs, seed 0, the "
             "default budget otherwise. The flat folder holds Fashion-MNIST's train images as PNGs at mixed "
             f"sizes ({', '.join(map(str, SIZES))} px, cycling); the evaluation folder its test images in class "
             f"folders. Writing the {args.samples} + 10000 PNGs took {written:.0f} s. Idle 2-core CPU. The "
             "built-in run's wall time is less where an earlier run left its teachers' outputs in the knowledge "
             "cache; the own-data run computes them (its data is new to the cache).",
             "Regenerate: `python -m bench.own_data`.", "",
             "| transfer data | transfer images | test images | student accuracy | soft-targets' target | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['transfer_samples']} | {row['test_samples']} | "
                     f"{row['student']['accuracy']:.4f} | {row['method_target']['accuracy']:.4f} | "
                     f"{row['seconds']:.0f} |")
    lines += ["", f"Student accuracy, own data / built-in: "
              f"{own['student']['accuracy'] / builtin['student']['accuracy']:.3f}.", "",
              "## The same flat folder without any labeled data: label-free metrics", "",
              f"`amalgam run` without `--eval-data`: {label_free['transfer_samples']} images trained on, "
              f"{label_free['check_samples']} held out and measured without labels ({label_free['seconds']:.0f} s). "
              "Agreement, not accuracy: the share of held-out images where the student names the class its target "
              "(or the teacher) names.", "",
              "| measure | images | value |", "|---|---|---|",
              f"| student vs soft-targets' combined target | {label_free['check_samples']} | "
              f"{label_free['student']['agreement_with_target']:.4f} |"]
    for name, teacher in label_free["teachers"].items():
        lines.append(f"| student vs teacher {name}, where it is trusted ({teacher['trusted_share']:.1%} of the "
                     f"images) | {teacher['trusted_samples']} | {teacher['student_agreement']:.4f} |")
    (RESULTS / "own-data.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
