"""Speed: what amalgamation costs over plain training, what the knowledge cache saves, what the student saves.

    OMP_NUM_THREADS=2 python -m bench.speed              # Fashion-MNIST split, about 6 minutes on 2 CPU cores

Everything is measured in one process, the compared variants interleaved round by round so a noisy machine
slows both alike; we report medians and their ratios:

1. One training step (teacher signals looked up, student forward, the method's losses, backward, optimiser
   step) with signals from the knowledge cache, divided by one plain supervised step of the same student on the
   same batch (cross-entropy): the overhead of amalgamating (goal at most 1.15; 1.0 is the floor).
2. One epoch of ``train()`` over the Fashion-MNIST transfer set with the teachers run live on every batch,
   against the same epoch with cached signals.
3. Student inference against running the teachers it replaces (each with its own preprocessing), per batch.

Peak memory while caching is ``bench/memory.py`` (``bench/results/memory.md``). Writes ``bench/results/speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from amalgam import load_teacher
from amalgam.pipeline import data_label_map
from amalgam.data import RelabeledImages, stratified_indices
from amalgam.engine import TrainConfig, train
from amalgam.knowledge import KnowledgeCache, LiveSignals
from amalgam.methods import LabeledSet, StepInputs, create_method
from amalgam.methods.base import Setup
from amalgam.students import Student, default_input_size
from amalgam.teachers import LabelSpace
from bench.quality import RESULTS
from bench.settings import LABELED_FRACTION, SETTINGS, STUDENT

STEP_METHODS = ("soft-targets", "trust-learner", "adaptive-weights")


def interleaved_medians(variants: dict[str, Callable[[], None]], rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each variant, run in turn ``rounds`` times after ``warmup`` untimed rounds; the order
    rotates every round, so no variant always runs right after the same other one."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(warmup + rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            run = variants[name]
            started = time.perf_counter()
            run()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def step_ratios(setting_name: str, rounds: int, batch_size: int) -> list[dict]:
    setting = SETTINGS[setting_name]
    teachers = [load_teacher(folder) for folder in setting.teacher_folders(progress=False)]
    data = setting.data()
    space = LabelSpace.union([t.class_names for t in teachers])
    transfer = RelabeledImages(data.train, data_label_map(data, space),
                               visible=stratified_indices(data.train_labels, LABELED_FRACTION, 0))
    cache = KnowledgeCache.build(teachers, transfer, data_name=data.name, taps=[[] for _ in teachers], progress=False)
    batch = torch.stack([transfer[i][0] for i in range(batch_size)])
    labels = torch.tensor([transfer[i][1] for i in range(batch_size)])
    indices = torch.arange(batch_size)
    truth = torch.tensor([data_label_map(data, space)[int(y)] for y in data.train_labels[:batch_size]])

    def student_and_optimizer():
        torch.manual_seed(0)
        student = Student(STUDENT, class_names=space.class_names, input_size=default_input_size(data.size),
                          channels=data.channels).train()
        return student, torch.optim.AdamW(student.parameters(), lr=1e-4)

    supervised_student, supervised_optimizer = student_and_optimizer()

    def supervised_step() -> None:
        loss = F.cross_entropy(supervised_student(batch), truth)
        supervised_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        supervised_optimizer.step()

    variants = {"supervised": supervised_step}
    for name in STEP_METHODS:
        method = create_method(name, space, teachers, {})
        visible = stratified_indices(data.train_labels, LABELED_FRACTION, 0)
        method.setup(Setup(LabeledSet.gather(transfer, visible, cache), cache.logits))
        method.train()
        student, optimizer = student_and_optimizer()

        def amalgamation_step(method=method, student=student, optimizer=optimizer) -> None:
            outputs = cache(batch, indices)
            logits = student(batch)
            loss = sum(method(StepInputs(logits, outputs, labels, batch, {}, indices)).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        variants[name] = amalgamation_step
    medians = interleaved_medians(variants, rounds)
    base = medians["supervised"]
    return [{"variant": name, "median_ms": 1000 * seconds, "ratio": seconds / base} for name, seconds in medians.items()]


def epoch_times(setting_name: str, batch_size: int) -> dict:
    """One epoch with live teachers and one with cached signals (the cache already built), alternating twice."""
    setting = SETTINGS[setting_name]
    teachers = [load_teacher(folder) for folder in setting.teacher_folders(progress=False)]
    data = setting.data()
    space = LabelSpace.union([t.class_names for t in teachers])
    transfer = RelabeledImages(data.train, data_label_map(data, space))
    cache = KnowledgeCache.build(teachers, transfer, data_name=data.name, taps=[[] for _ in teachers], progress=False)
    live = LiveSignals(teachers)

    def epoch(signals) -> Callable[[], None]:
        def run() -> None:
            torch.manual_seed(0)
            student = Student(STUDENT, class_names=space.class_names, input_size=default_input_size(data.size),
                              channels=data.channels)
            train(student, create_method("soft-targets", space, teachers, {"label_weight": 0.0}), signals, transfer,
                  TrainConfig(epochs=1, batch_size=batch_size), progress=False)
        return run

    medians = interleaved_medians({"live teachers": epoch(live), "cached signals": epoch(cache)}, rounds=2, warmup=0)
    return {"samples": len(transfer), **medians}


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


def write_report(results: dict, out: Path = RESULTS) -> Path:
    steps, epochs, inference = results["steps"], results["epochs"], results["inference"]
    lines = [
        f"# Speed: {results['setting']}",
        "",
        f"Command: `{results['command']}` ({results['machine']}; one process, variants interleaved, medians; "
        f"load average {results['load_average']:.1f} when it started: other work shares the cores, so read the "
        "ratios, not the absolute times).",
        "",
        f"## One training step, batch {results['batch_size']}, signals from the knowledge cache",
        "",
        "| step | median (ms) | ÷ supervised step |",
        "|---|---|---|",
        *[f"| {row['variant']} | {row['median_ms']:.1f} | {row['ratio']:.3f} |" for row in steps],
        "",
        "The goal is at most 1.15 (1.0 is the floor: the student's own forward, backward and update).",
        "",
        f"## One epoch over {epochs['samples']} transfer images (`soft-targets`, batch {results['batch_size']})",
        "",
        "| teacher signals | seconds | ÷ cached |",
        "|---|---|---|",
        f"| live teachers on every batch | {epochs['live teachers']:.1f} | "
        f"{epochs['live teachers'] / epochs['cached signals']:.2f} |",
        f"| knowledge cache | {epochs['cached signals']:.1f} | 1.00 |",
        "",
        f"## Inference, batch {inference['batch']}",
        "",
        "| model | parameters | median (ms) |",
        "|---|---|---|",
        f"| student `{STUDENT}` | {inference['student_parameters'] / 1e6:.2f} M | {1000 * inference['student']:.1f} |",
        f"| the teachers it replaces: {', '.join(inference['teacher_names'])} | {inference['teacher_parameters'] / 1e6:.2f} M "
        f"| {1000 * inference['teachers']:.1f} |",
        "",
        f"The student answers in {inference['student'] / inference['teachers']:.2f} of the teachers' time.",
        "",
        "Peak memory while caching 2 and 4 teachers: [memory.md](memory.md).",
    ]
    path = out / "speed.md"
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="fmnist-split")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python -m bench.speed --setting {args.setting}"
    results = {
        "setting": args.setting, "batch_size": args.batch_size, "command": command,
        "load_average": os.getloadavg()[0],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "steps": step_ratios(args.setting, args.rounds, args.batch_size),
        "inference": inference_times(args.setting, args.rounds, args.batch_size),
        "epochs": epoch_times(args.setting, args.batch_size),
    }
    print(write_report(results, args.out).read_text())


if __name__ == "__main__":
    main()
