"""A short check of the CUDA / mixed-precision path, for a session that has a GPU (about 2 minutes on one).

    python -m bench.gpu_check                # writes bench/results/gpu-check.md (and .json)

On the digits demo teachers (trained here if missing) and the ImageNet EfficientNet-Lite0 teacher at 224 px:
1. the knowledge cache built in bf16 on the GPU (images/s), against a plain ``torch.inference_mode`` loop
   over the same images and model in bf16;
2. one training epoch with the cache, bf16 autocast, ``trust-learner`` (its per-row weights looked up), with
   ``torch.cuda.set_sync_debug_mode("warn")`` on: every host sync inside the training loop is counted (the
   goal: none per step, only the reads of the running loss every ``LOG_EVERY`` batches and at the epoch's end);
3. the same epoch with crop/flip/mixup augmentation and live teachers.

Exits with status 2 (and writes nothing) where no CUDA device is present.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bench.quality import RESULTS


def _synced(fn) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (run it on a machine with a GPU)")
        return 2
    import amalgam
    from amalgam.data import load_data
    from amalgam.data.augment import TransferViews
    from amalgam.engine import trainer
    from amalgam.knowledge import KnowledgeCache
    from amalgam.teachers import load_teacher
    from amalgam.zoo import build_demo_zoo
    from amalgam.zoo.imagenet import write_lite0_folder

    device = torch.device("cuda")
    work = Path(tempfile.mkdtemp())
    lite0 = load_teacher(write_lite0_folder(work / "lite0")).to(device)
    data = load_data("digits")
    views = TransferViews(data.train)
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}

    build = lambda: KnowledgeCache.build([lite0], views, data_name="digits", root=work / f"kc-{time.time_ns()}",  # noqa: E731
                                         batch_size=256, mixed_precision="bf16", progress=False)
    images = torch.stack([views[i][0] for i in range(len(views))])

    @torch.inference_mode()
    def plain() -> None:
        for batch in images.split(256):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                lite0.model(lite0.input_spec(batch.to(device, non_blocking=True))).float().cpu()

    build(), plain()  # warm up kernels and the allocator
    cache_s, plain_s = min(_synced(build) for _ in range(3)), min(_synced(plain) for _ in range(3))
    results["cache_build"] = {"images": len(views), "images_per_s": len(views) / cache_s,
                              "plain_images_per_s": len(views) / plain_s, "ratio": plain_s / cache_s}

    zoo = build_demo_zoo(progress=False)
    for label, options in (("cached, trust-learner, bf16", dict(method="trust-learner", labeled_fraction=0.1)),
                           ("live, augment crop,flip,mixup, bf16",
                            dict(method="soft-targets", augment="crop,flip,mixup", cache_teachers=False))):
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            started = time.perf_counter()
            run = amalgam.amalgamate(zoo, data=data, epochs=1, batch_size=128, mixed_precision="bf16",
                                     knowledge_cache=work / "kc-runs", progress=False, **options)
            seconds = time.perf_counter() - started
        torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
        steps = len(views) // 128
        results[label] = {"seconds": seconds, "accuracy": run.metrics["student"]["accuracy"],
                          "host_syncs": len(syncs), "steps": steps, "log_every": trainer.LOG_EVERY}

    lines = ["# GPU check", "", f"Command: `python -m bench.gpu_check` on {results['device']} (torch {results['torch']}).",
             "", "| what | number |", "|---|---|"]
    c = results["cache_build"]
    lines += [f"| knowledge cache build, Lite0 224 px bf16, {c['images']} images | {c['images_per_s']:.0f} images/s |",
              f"| plain inference loop, same model, batch and precision | {c['plain_images_per_s']:.0f} images/s |",
              f"| cache build ÷ plain loop (speed) | {c['ratio']:.2f} |"]
    for label in ("cached, trust-learner, bf16", "live, augment crop,flip,mixup, bf16"):
        r = results[label]
        lines.append(f"| one epoch, {label}: seconds / host syncs over {r['steps']} steps | {r['seconds']:.1f} s / "
                     f"{r['host_syncs']} |")
    out = RESULTS / "gpu-check.md"
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
