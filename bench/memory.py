"""Peak memory while filling the knowledge cache: 2 vs 4 teachers, one at a time vs all loaded at once.

    OMP_NUM_THREADS=1 python -m bench.memory            # about two minutes on 2 CPU cores

Teachers are real-size timm ImageNet architectures (about 24-28 M parameters, 90-110 MB of float32 weights
each) created locally with random weights (offline: no pretrained download) and saved in timm's Hub layout
under ``$AMALGAM_HOME/bench-teachers/memory/``, with a 3x64x64 input. Memory depends on sizes, not on weight
values. Each measurement runs in a fresh subprocess on 512 digits transfer images and reports the process's
peak resident set size (``ru_maxrss``), and that peak minus the RSS just before caching (torch, the data and
the imports are then already in memory):

- ``sources``: ``KnowledgeCache.build`` given the teacher folders: each is loaded, run, written and freed
  before the next (how the cache is meant to be filled);
- ``all loaded``: the same teachers all loaded first (what holding every teacher costs), then cached.

Writes ``bench/results/memory.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amalgam.paths import amalgam_home

RESULTS = Path(__file__).resolve().parent / "results"
ARCHITECTURES = ["convnext_tiny", "resnet50", "seresnext50_32x4d", "resnet50d"]  # the largest comes first
INPUT = (3, 64, 64)
SAMPLES = 512
COMMAND = "OMP_NUM_THREADS=1 python -m bench.memory"


def teacher_folders() -> list[Path]:
    """Create (once) the bench's teacher folders; return them in ``ARCHITECTURES`` order."""
    import timm
    import torch
    from timm.models import save_for_hf

    root = amalgam_home() / "bench-teachers" / "memory"
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    for seed, architecture in enumerate(ARCHITECTURES):
        folder = root / architecture
        if not (folder / "config.json").is_file():
            torch.manual_seed(seed)
            model = timm.create_model(architecture, pretrained=False, num_classes=10)
            with tempfile.TemporaryDirectory(dir=root, prefix=f".{architecture}-") as scratch:
                staged = Path(scratch) / architecture
                save_for_hf(model, staged, model_config={"label_names": [str(d) for d in range(10)]},
                            data_config={"input_size": INPUT, "mean": (0.5,) * 3, "std": (0.5,) * 3},
                            safe_serialization=True)
                staged.rename(folder)  # complete folders only, as the zoo does
        folders.append(folder)
    return folders


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def measure(mode: str, count: int, batch_size: int) -> dict:
    """In this process: cache ``count`` teachers and return peak RSS figures (run it in a fresh process)."""
    import torch

    from amalgam.data import TensorImages, load_digits
    from amalgam.knowledge import KnowledgeCache
    from amalgam.teachers import load_teacher

    train = load_digits().train
    data = TensorImages(train.images[:SAMPLES].clone(), train.labels[:SAMPLES].clone())
    folders = teacher_folders()[:count]
    torch.zeros(1)  # torch's allocator and thread pools are set up before the "before" reading
    before = _rss_kib()
    started = time.perf_counter()
    teachers = folders if mode == "sources" else [load_teacher(folder) for folder in folders]
    with tempfile.TemporaryDirectory() as root:
        KnowledgeCache.build(teachers, data, data_name="digits-512", root=root, batch_size=batch_size,
                             progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"mode": mode, "teachers": count, "peak_mib": peak / 1024, "before_mib": before / 1024,
            "added_mib": (peak - before) / 1024, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.batch_size)))
        return

    import timm

    folders = teacher_folders()
    sizes = {f.name: sum(p.stat().st_size for p in f.glob("*.safetensors")) / 2**20 for f in folders}
    params = {a: sum(p.numel() for p in timm.create_model(a, num_classes=10).parameters()) / 1e6
              for a in ARCHITECTURES}
    rows = []
    for mode in ("sources", "all-loaded"):
        for count in (2, 4):
            done = subprocess.run(
                [sys.executable, "-m", "bench.memory", "--child", mode, str(count), "--batch-size",
                 str(args.batch_size)],
                capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent,
                env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1])
    write_report(rows, sizes, params, args.batch_size)


def write_report(rows: list[dict], sizes: dict[str, float], params: dict[str, float], batch_size: int) -> None:
    lines = [
        "# Peak memory while caching teacher signals",
        "",
        f"Command: `{COMMAND}` (batch size {batch_size}; each row is a fresh subprocess; CPU, "
        f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}`).",
        "",
        f"Teachers (timm, random weights, {INPUT[0]}x{INPUT[1]}x{INPUT[2]} input, saved in timm's Hub layout), "
        f"{SAMPLES} digits transfer images, logits only:",
        "",
        "| teacher | parameters | weights on disk |",
        "|---|---|---|",
        *[f"| `{name}` | {params[name]:.1f} M | {sizes[name]:.0f} MiB |" for name in ARCHITECTURES],
        "",
        "| teachers | how | peak RSS | peak minus RSS before caching | seconds |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        how = "given as folders: loaded, run and freed one at a time" if row["mode"] == "sources" else \
            "all loaded first, then cached one at a time"
        lines.append(f"| {row['teachers']} | {how} | {row['peak_mib']:.0f} MiB | {row['added_mib']:.0f} MiB | "
                     f"{row['seconds']:.1f} |")
    by = {(r["mode"], r["teachers"]): r["added_mib"] for r in rows}
    lines += [
        "",
        f"One at a time, caching 4 teachers adds {by['sources', 4]:.0f} MiB over the process's memory before "
        f"caching, against {by['sources', 2]:.0f} MiB for 2 ({by['sources', 4] - by['sources', 2]:+.0f} MiB): "
        f"the peak is set by the largest teacher (`{ARCHITECTURES[0]}`, {sizes[ARCHITECTURES[0]]:.0f} MiB of "
        "weights) plus a batch, not by the number of teachers. "
        f"Holding all teachers at once costs {by['all-loaded', 2]:.0f} MiB for 2 and "
        f"{by['all-loaded', 4]:.0f} MiB for 4 ({by['all-loaded', 4] - by['all-loaded', 2]:+.0f} MiB), growing "
        "with their sum.",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
