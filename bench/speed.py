"""Speed: what amalgamation costs over plain PyTorch, what the knowledge cache saves, what the student saves.

    OMP_NUM_THREADS=2 python -m bench.speed          # about 25 minutes on 2 CPU cores

Everything is measured in one process, the compared variants interleaved round by round so that a noisy machine
slows all alike; we report medians and their ratios. Two workloads:

- **A folder of 224 px JPEG files** (Fashion-MNIST train images written at 224 px RGB, in class folders; made once
  under ``$AMALGAM_HOME/bench-data``) with the ImageNet EfficientNet-Lite0 teacher (4.7 M parameters at 224 px):
  1. building the knowledge cache against a plain ``torch.inference_mode`` loop over the same files (PIL decode,
     the teacher's normalisation, same batch and workers) with the same model (goal: at least 0.9 of its speed);
  2. an epoch of amalgam with the cache against a plain supervised epoch of the same student (goal: at most 1.1x);
  3. one-teacher distillation epochs: a hand-written PyTorch KD loop with the teacher live, timm's
     ``LogitDistillationTask``, amalgam with the teacher live, and amalgam with the cache (same student, loader,
     order and loss; goal: amalgam live no slower than the hand-written loop).
- **Fashion-MNIST split** (the quality benchmark's teachers): one training step of EVERY registered method with
  its signals from the knowledge cache, divided by one plain supervised step of the same student on the same
  batch (goal at most 1.15 each; methods that run teachers in their step by design say so), the methods over
  the goal again with a larger student (EfficientNet-B0); and student inference against the teachers it
  replaces.

Writes ``bench/results/speed.md`` (and ``.json``). Peak memory while caching is ``bench/memory.py``. The GPU
path is ``bench/gpu_check.py`` (run where a GPU is present; its rows are in ``gpu-check.md``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from amalgam import load_teacher
from amalgam.config import TrainConfig
from amalgam.data import RelabeledImages, load_data, stratified_indices
from amalgam.data.augment import TransferViews
from amalgam.engine import train
from amalgam.engine.trainer import Trainable, adamw, parameter_groups, probe
from amalgam.knowledge import KnowledgeCache, LiveSignals
from amalgam.methods import LabeledSet, available_methods, create_method
from amalgam.methods.base import Batch, Setup
from amalgam.paths import amalgam_home
from amalgam.pipeline import data_label_map
from amalgam.students import Student, build_student, default_input_size
from amalgam.students.stages import resolve_stages
from amalgam.teachers import LabelSpace, Teacher
from amalgam.zoo.imagenet import write_lite0_folder
from bench.quality import RESULTS
from bench.settings import FASHION, LABELED_FRACTION, SETTINGS, STUDENT

STEP_SUBSET = 2048  # transfer images cached for the step timings (a step does not depend on the set's size)
STEP_GOAL = 1.15  # a cached step over the plain supervised step, at most
LARGER_STUDENT = "efficientnet_b0"  # the methods over the goal are timed again with this student (4.0 M parameters)


def interleaved_medians(variants: dict[str, Callable[[], None]], rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each variant, run in turn ``rounds`` times after ``warmup`` untimed rounds; the order
    rotates every round, so no variant always runs right after the same other one."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(warmup + rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            variants[name]()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


# ------------------------------------------------------------------------------------------ the JPEG folder


def jpeg_folder(count: int, size: int = 224) -> Path:
    """``count`` Fashion-MNIST train images (the first ones, all classes) as ``size`` px RGB JPEG files (quality
    90) in class folders, written once."""
    from PIL import Image

    folder = amalgam_home() / "bench-data" / f"fashion-mnist-jpeg-{size}px-{count}"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    data = load_data("fashion-mnist")
    for index in range(count):
        image, label = data.train[index]
        pixels = (image[0].numpy() * 255).round().astype(np.uint8)
        picture = Image.fromarray(pixels).resize((size, size), Image.BILINEAR).convert("RGB")
        target = folder / FASHION[label].replace("/", "_") / f"{index:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        picture.save(target, quality=90)
    (folder / ".complete").write_text("")
    return folder


class PlainJPEGs(Dataset):
    """What a hand-written PyTorch loop reads: each file decoded with PIL and put through timm's own eval
    transform of the model (``create_transform(**resolve_data_config(model=...))``: resize, centre crop,
    normalise), in the loader's workers."""

    def __init__(self, files: Sequence[Path], model: torch.nn.Module) -> None:
        from timm.data import create_transform, resolve_data_config

        self.files = list(files)
        self.transform = create_transform(**resolve_data_config({}, model=model))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[index]) as picture:
            return self.transform(picture.convert("RGB"))


def eval_transform_on_batch(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """timm's eval transform of ``model`` written by hand for a square ``[0, 1]`` batch, as a hand-written KD loop
    would apply it to the student's batch: resize to ``size / crop_pct``, centre crop, normalise."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    side = config["input_size"][-1]
    scale = math.floor(side / config["crop_pct"])
    mean = torch.tensor(config["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(config["std"]).view(1, -1, 1, 1)

    def transform(images: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(images, size=(scale, scale), mode=config["interpolation"], antialias=True,
                                align_corners=False)
        top = (scale - side) // 2
        return (resized[..., top:top + side, top:top + side] - mean) / std

    return transform


def cache_build(folder: Path, teacher: Teacher, batch_size: int, workers: int, rounds: int) -> dict:
    """Knowledge-cache build (a fresh cache each time) against a plain inference loop over the same files."""
    data = load_data(str(folder))
    views = TransferViews(data.train)
    files = sorted(folder.rglob("*.jpg"))[:len(views)]
    roots = Path(tempfile.mkdtemp(prefix="speed-cache-"))

    def amalgam_cache() -> None:
        root = Path(tempfile.mkdtemp(dir=roots))
        KnowledgeCache.build([teacher], views, data_name="speed", root=root, batch_size=batch_size,
                             num_workers=workers, progress=False)
        shutil.rmtree(root)

    @torch.inference_mode()
    def plain_loop() -> None:
        rows = []
        for images in DataLoader(PlainJPEGs(files, teacher.model), batch_size=batch_size, num_workers=workers):
            rows.append(teacher.model(images).float().cpu())
        torch.cat(rows)

    medians = interleaved_medians({"plain": plain_loop, "amalgam": amalgam_cache}, rounds, warmup=1)
    shutil.rmtree(roots, ignore_errors=True)
    return {"images": len(views), "batch": batch_size, "workers": workers,
            "plain_images_per_s": len(views) / medians["plain"], "amalgam_images_per_s": len(views) / medians["amalgam"],
            "ratio": medians["plain"] / medians["amalgam"]}


def epochs_on_jpegs(folder: Path, teacher: Teacher, batch_size: int, workers: int, rounds: int) -> dict:
    """Epoch times on the JPEG folder: amalgam with the cache vs plain supervised; one-teacher KD four ways."""
    import timm
    from timm.task import LogitDistillationTask

    data = load_data(str(folder))
    size = default_input_size(data.size)
    space = LabelSpace.union([teacher.class_names])
    transfer = RelabeledImages(data.train, list(range(len(data.class_names))))  # labels used by the supervised epoch
    cache = KnowledgeCache.build([teacher], TransferViews(transfer), data_name="speed-epochs", batch_size=batch_size,
                                 num_workers=workers, progress=False)
    live = LiveSignals([teacher])
    config = TrainConfig(epochs=1, batch_size=batch_size, num_workers=workers)

    def loader() -> DataLoader:
        return DataLoader(data.train, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                          generator=torch.Generator().manual_seed(0))

    def student(classes: Sequence[str]) -> Student:
        torch.manual_seed(0)
        return Student(STUDENT, class_names=list(classes), input_size=size, channels=data.channels)

    def plain_supervised() -> None:
        model = student(data.class_names)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for images, labels in loader():
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def amalgam_epoch(signals) -> Callable[[], None]:
        def run() -> None:
            method = create_method("soft-targets", space, [teacher], {"label_weight": 0.0, "temperature": 1.0})
            train(student(space.class_names), method, signals, transfer, config, progress=False)
        return run

    teacher_view = eval_transform_on_batch(teacher.model)

    def hand_written_kd() -> None:
        model = student(space.class_names)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for images, _ in loader():
            with torch.no_grad():
                target = teacher.model(teacher_view(images)).softmax(dim=-1)
            loss = F.kl_div(model(images).log_softmax(dim=-1), target, reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def timm_task() -> None:
        torch.manual_seed(0)
        body = timm.create_model(STUDENT, num_classes=len(space.class_names))
        task = LogitDistillationTask(body, teacher.model, task_loss_weight=0.0, temperature=1.0, verbose=False)
        task.train()
        optimizer = torch.optim.AdamW(body.parameters(), lr=1e-3)
        mean = torch.tensor(body.pretrained_cfg["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(body.pretrained_cfg["std"]).view(1, -1, 1, 1)
        for images, labels in loader():
            loss = task((images - mean) / std, labels)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    cached = interleaved_medians({"plain supervised": plain_supervised, "amalgam, cache": amalgam_epoch(cache)},
                                 rounds, warmup=1)
    kd = interleaved_medians({"hand-written KD loop, teacher live": hand_written_kd,
                              "timm LogitDistillationTask, teacher live": timm_task,
                              "amalgam, teacher live": amalgam_epoch(live),
                              "amalgam, knowledge cache": amalgam_epoch(cache)}, max(1, rounds // 2), warmup=0)
    return {"images": len(transfer), "student_input": size, "batch": batch_size, "workers": workers,
            "supervised": cached, "kd": kd}


# ---------------------------------------------------------------------------------- every method's step


def method_steps(setting_name: str, rounds: int, batch_size: int, student: str = STUDENT,
                 methods: Sequence[str] | None = None) -> list[dict]:
    """One training step of every registered method (or of ``methods``; signals from the cache, the engine's own
    Trainable and Setup) against a plain supervised step of the same ``student`` on the same batch."""
    setting = SETTINGS[setting_name]
    teachers = [load_teacher(folder) for folder in setting.teacher_folders(progress=False)]
    data = setting.data()
    space = LabelSpace.union([t.class_names for t in teachers])
    label_map = data_label_map(data, space)
    rows = np.arange(STEP_SUBSET)
    visible = stratified_indices(data.train_labels[rows], LABELED_FRACTION, 0)
    transfer = RelabeledImages(Subset(data.train, rows), label_map, visible=visible)
    root = Path(tempfile.mkdtemp(prefix="speed-steps-"))
    # a shuffled batch's rows, as training reads them (the cache's rows are scattered over its record batches)
    indices = torch.randperm(STEP_SUBSET, generator=torch.Generator().manual_seed(0))[:batch_size]
    batch = torch.stack([transfer[i][0] for i in indices.tolist()])
    labels = torch.tensor([transfer[i][1] for i in indices.tolist()])
    truth = torch.tensor([label_map[int(y)] for y in data.train_labels[indices.numpy()]])
    size = default_input_size(data.size)
    config = TrainConfig(lr=1e-4)  # every variant steps the engine's own optimizer

    torch.manual_seed(0)
    plain = Student(student, class_names=space.class_names, input_size=size, channels=data.channels).train()
    plain_optimizer = adamw(parameter_groups(plain, [], config), config, torch.device("cpu"))

    def supervised_step() -> None:
        loss = F.cross_entropy(plain(batch), truth)
        plain_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        plain_optimizer.step()

    variants, kinds = {"plain supervised step": supervised_step}, {"plain supervised step": "reference"}
    for name in methods if methods is not None else available_methods():
        torch.manual_seed(0)
        method = create_method(name, space, teachers, {})
        needs = method.needs()
        taps = needs.taps_per_teacher(len(teachers))
        signals = None
        if needs.teacher_signals == "outputs":
            signals = KnowledgeCache.build(teachers, TransferViews(transfer), data_name="speed-steps", taps=taps,
                                           root=root, progress=False)
        model = build_student(student, space.class_names, input_size=size, data_size=data.size,
                              channels=data.channels, heads=needs.heads, serve=needs.serve).train()
        stages = resolve_stages(model, needs.student_stages)
        trainable = Trainable(model, method, stages, needs.student_parts)
        labeled = LabeledSet.gather(transfer, visible, signals or LiveSignals(teachers, taps)) \
            if not needs.label_free else None
        method.setup(Setup(labeled, list(signals.logits) if signals is not None else None, model, stages,
                           **(probe(trainable, signals, transfer) if needs.taps_features else {})))
        optimizer = adamw(parameter_groups(model, [p for p in method.parameters() if p.requires_grad], config),
                          config, torch.device("cpu"))

        def step(trainable=trainable, optimizer=optimizer, signals=signals) -> None:
            outputs = signals(batch, indices) if signals is not None else []
            loss = sum(trainable(Batch(batch, labels, indices, outputs, indices)).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        variants[name] = step
        kinds[name] = {"outputs": "cached signals", "live": "runs the teachers in its step (by design)",
                       "none": "no teachers"}[needs.teacher_signals]
    medians = interleaved_medians(variants, rounds)
    shutil.rmtree(root, ignore_errors=True)
    base = medians["plain supervised step"]
    return [{"variant": name, "signals": kinds[name], "median_ms": 1000 * seconds, "ratio": seconds / base,
             **({"parameters": plain.num_parameters} if name == "plain supervised step" else {})}
            for name, seconds in medians.items()]


def over_goal(steps: Sequence[dict]) -> list[str]:
    """The methods on cached signals whose step is over :data:`STEP_GOAL` times the plain step.

    >>> over_goal([{"variant": "a", "signals": "cached signals", "ratio": 1.3},
    ...            {"variant": "b", "signals": "cached signals", "ratio": 1.1},
    ...            {"variant": "c", "signals": "runs the teachers in its step (by design)", "ratio": 3.0}])
    ['a']
    """
    return [row["variant"] for row in steps if row["signals"] == "cached signals" and row["ratio"] > STEP_GOAL]


def larger_student_steps(setting_name: str, rounds: int, batch_size: int, steps: Sequence[dict],
                         student: str = LARGER_STUDENT) -> dict:
    """The methods :func:`over_goal` in ``steps``, timed again with a larger ``student``: their extra modules
    (autoencoders, common-feature blocks) and triplets do not grow with the student's depth, its own step does."""
    methods = over_goal(steps)
    return {"student": student, "rows": method_steps(setting_name, rounds, batch_size, student, methods)}


@torch.no_grad()
def inference_times(setting_name: str, rounds: int, batch_size: int) -> dict:
    setting = SETTINGS[setting_name]
    teachers = [load_teacher(folder) for folder in setting.teacher_folders(progress=False)]
    data = setting.data()
    space = LabelSpace.union([t.class_names for t in teachers])
    student = Student(STUDENT, class_names=space.class_names, input_size=default_input_size(data.size),
                      channels=data.channels).eval()
    batch = torch.stack([data.test[i][0] for i in range(batch_size)])
    medians = interleaved_medians({
        "student": lambda: student(batch),
        "teachers": lambda: [teacher(batch) for teacher in teachers],
    }, rounds)
    return {"batch": batch_size, **medians,
            "student_parameters": student.num_parameters,
            "teacher_parameters": sum(t.num_parameters for t in teachers),
            "teacher_names": [f"{t.name} ({t.library} {t.architecture})" for t in teachers]}


# ---------------------------------------------------------------------------------------------- report


def rerun_line(results: dict, section: str, note: str = "") -> list[str]:
    """The line naming the command a section was rerun alone by, when it was (``--only``)."""
    command = results.get("reruns", {}).get(section)
    return [f"Rerun alone by `{command}`" + (f"; {note}" if note else "."), ""] if command else []


def write_report(results: dict, out: Path = RESULTS) -> Path:
    build, epochs, steps, inference = results["cache_build"], results["epochs"], results["steps"], results["inference"]
    sup, kd = epochs["supervised"], epochs["kd"]
    hand = kd["hand-written KD loop, teacher live"]

    lines = [
        "# Speed",
        "",
        f"Command: `{results['command']}` ({results['machine']}; one process, variants interleaved, medians; "
        f"load average {results['load_average']:.1f} when it started: other work shares the cores, so read the "
        "ratios, not the absolute times). Every row here was measured on this CPU machine; the GPU path is "
        + ("[gpu-check.md](gpu-check.md)" if (out / "gpu-check.md").exists() else
           "checked by `python -m bench.gpu_check` where a GPU is lent (not yet run: no GPU was lent)") + ".",
        "",
        f"## A folder of 224 px JPEG files ({build['images']} Fashion-MNIST images), EfficientNet-Lite0 teacher",
        "",
        f"Built once by `bench.speed.jpeg_folder` under `$AMALGAM_HOME/bench-data/`: {results['jpeg_folder']}.",
        "",
        f"### Caching the teacher's outputs (batch {build['batch']}, {build['workers']} loader workers)",
        "",
        "| | images/s |",
        "|---|---|",
        f"| plain `torch.inference_mode()` loop (PIL decode and timm's eval transform in the workers, model) | "
        f"{build['plain_images_per_s']:.1f} |",
        f"| amalgam's knowledge cache build | {build['amalgam_images_per_s']:.1f} |",
        "",
        f"The cache builds at **{build['ratio']:.2f}** of the plain loop's speed (goal: at least 0.9).",
        "",
        *rerun_line(results, "cache-build"),
        f"### One epoch (student `{STUDENT}` at {epochs['student_input']} px, batch {epochs['batch']}, "
        f"{epochs['workers']} workers)",
        "",
        "| epoch | seconds | ÷ reference |",
        "|---|---|---|",
        f"| plain supervised epoch (reference) | {sup['plain supervised']:.1f} | 1.00 |",
        f"| amalgam, soft-targets with the knowledge cache | {sup['amalgam, cache']:.1f} | "
        f"{sup['amalgam, cache'] / sup['plain supervised']:.2f} |",
        "",
        "Goal: at most 1.1.",
        "",
        "| one-teacher distillation epoch | seconds | ÷ hand-written loop |",
        "|---|---|---|",
        *[f"| {name} | {seconds:.1f} | {seconds / hand:.2f} |" for name, seconds in kd.items()],
        "",
        "Goal: amalgam with the teacher live no slower than the hand-written loop. The hand-written loop gives the "
        "teacher its timm eval view of the batch (resize to 256, centre crop 224, normalise), as amalgam does; "
        "timm's task only re-normalises the student's input (no resize or crop), so it does less work per batch. "
        "The cache removes the teacher from every epoch after the first.",
        "",
        f"## One training step of every method, batch {results['batch_size']}, Fashion-MNIST split",
        "",
        *rerun_line(results, "steps", "a shuffled batch's rows, every variant stepping the engine's fused AdamW."),
        "| method | teacher signals | median (ms) | ÷ plain supervised step |",
        "|---|---|---|---|",
        *[f"| {row['variant']} | {row['signals']} | {row['median_ms']:.1f} | {row['ratio']:.3f} |" for row in steps],
        "",
        f"The goal is at most {STEP_GOAL} for methods on cached signals (1.0 is the floor: the student's own "
        "forward, backward and update).",
        "",
        *larger_student_report(results),
        f"## Inference, batch {inference['batch']}",
        "",
        "| model | parameters | median (ms) |",
        "|---|---|---|",
        f"| student `{STUDENT}` | {inference['student_parameters'] / 1e6:.2f} M | {1000 * inference['student']:.1f} |",
        f"| the teachers it replaces: {', '.join(inference['teacher_names'])} | "
        f"{inference['teacher_parameters'] / 1e6:.2f} M | {1000 * inference['teachers']:.1f} |",
        "",
        f"The student answers in {inference['student'] / inference['teachers']:.2f} of the teachers' time.",
        "",
        "Peak memory while caching 2 and 4 teachers: [memory.md](memory.md).",
    ]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "speed.md"
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return path


def larger_student_report(results: dict) -> list[str]:
    """The steps-larger table: each method over the goal with both students, when it was measured."""
    larger = results.get("larger_student_steps")
    if not larger:
        return []
    small = {row["variant"]: row for row in results["steps"]}
    rows, plain = larger["rows"], larger["rows"][0]
    return [
        f"### The methods over the goal, with student `{larger['student']}` ({plain['parameters'] / 1e6:.1f} M "
        f"parameters against {results['inference']['student_parameters'] / 1e6:.2f} M)",
        "",
        *rerun_line(results, "steps-larger"),
        f"| method | median (ms) | ÷ plain supervised step | ÷ with `{STUDENT}` (above) |",
        "|---|---|---|---|",
        *[f"| {row['variant']} | {row['median_ms']:.1f} | {row['ratio']:.3f} | {small[row['variant']]['ratio']:.3f} |"
          for row in rows],
        "",
        "Their extra work (autoencoders and common-feature blocks on the paired maps, the in-batch triplets) does "
        "not grow with the student's depth; the student's own step does. (At about a second a step, a few "
        "hundredths either way is this machine's noise.)",
        "",
    ]


SECTIONS = {"cache-build": "cache_build", "epochs": "epochs", "steps": "steps",
            "steps-larger": "larger_student_steps", "inference": "inference"}


JPEG_SECTIONS = ("cache-build", "epochs")  # measured on the JPEG folder with the Lite0 teacher


@functools.cache
def lite0_teacher() -> Teacher:
    """The ImageNet EfficientNet-Lite0 teacher, loaded once for every JPEG section of a run."""
    return load_teacher(write_lite0_folder(Path(tempfile.mkdtemp()) / "lite0"))


def run_section(section: str, args: argparse.Namespace, results: dict) -> dict | list:
    """Measure one section of the report (a key of :data:`SECTIONS`) with the command line's settings
    (``steps-larger`` reads which methods to time again from the ``steps`` already in ``results``)."""
    if section in JPEG_SECTIONS:
        measure = cache_build if section == "cache-build" else epochs_on_jpegs
        return measure(jpeg_folder(args.jpegs), lite0_teacher(), 64, args.workers, args.jpeg_rounds)
    if section == "steps":
        return method_steps(args.setting, args.rounds, args.batch_size)
    if section == "steps-larger":
        return larger_student_steps(args.setting, args.rounds, args.batch_size, results["steps"])
    return inference_times(args.setting, args.rounds, args.batch_size)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="fmnist-split")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--jpegs", type=int, default=512, help="files in the 224 px JPEG folder")
    parser.add_argument("--jpeg-rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 1) - 1)))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", type=lambda text: text.split(","), default=None, metavar="SECTIONS",
                        help=f"rerun only these sections ({', '.join(SECTIONS)}, comma-separated); the others are "
                             "kept from speed.json")
    args = parser.parse_args(argv)
    if args.only:
        unknown = sorted(set(args.only) - set(SECTIONS))
        if unknown:
            parser.error(f"--only: unknown sections {unknown}; the sections are {', '.join(SECTIONS)}")
        results = json.loads((args.out / "speed.json").read_text())
        for section in args.only:
            load = os.getloadavg()[0]  # before the section loads the machine itself
            results[SECTIONS[section]] = run_section(section, args, results)
            rounds = f"--jpeg-rounds {args.jpeg_rounds}" if section in JPEG_SECTIONS else f"--rounds {args.rounds}"
            results.setdefault("reruns", {})[section] = (
                f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python -m bench.speed --setting "
                f"{args.setting} --only {section} {rounds} (load average {load:.1f})")
        print(write_report(results, args.out).read_text())
        return
    command = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python -m bench.speed --setting "
               f"{args.setting} --jpegs {args.jpegs}")
    results = {
        "setting": args.setting, "batch_size": args.batch_size, "command": command,
        "load_average": os.getloadavg()[0], "jpeg_folder": f"{args.jpegs} files, 224x224 RGB JPEG, quality 90",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }
    for section, key in SECTIONS.items():  # in order: steps-larger reads the steps
        results[key] = run_section(section, args, results)
    print(write_report(results, args.out).read_text())


if __name__ == "__main__":
    main()
