"""The ``amalgam`` command line: ``amalgam run [RECIPE]`` (``--resume RUN_DIR`` continues a run that stopped),
``amalgam methods``, ``amalgam teacher SOURCE``, ``amalgam cache verify``, ``amalgam push RUN_DIR REPO_ID``."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from amalgam.errors import RecipeError
from amalgam.publish.card import DEFAULT_LICENSE
from amalgam.recipe import DataSection, Recipe, TeacherEntry, load_recipe, parse_recipe

RECIPE_FILE = "recipe.json"  # the recipe a run was started with, in its run folder, for --resume


def create_run_dir(recipe: Recipe) -> Path:
    """A new, empty run folder ``<output.dir>/<date-time>-<method>-<data>``, created exclusively: a run started
    in the same second gets ``...-2`` (then ``-3``...), so two runs never share (and mix) one folder."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    data = Path(recipe.data.name).name.replace("/", "-")
    base = Path(recipe.output.dir) / f"{stamp}-{recipe.method.name}-{data}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for attempt in itertools.count(1):
        folder = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            folder.mkdir()  # atomic: exactly one process creates a given name
            return folder
        except FileExistsError:
            continue
    raise AssertionError("unreachable")  # pragma: no cover


def check_recipe(recipe: Recipe) -> None:
    """What can be checked before any teacher or data is loaded (the recipe's values were checked on parsing):
    the method and its options, and the student (its timm name, Hub id or folder)."""
    from amalgam.methods.registry import check_method
    from amalgam.students import check_student_source

    check_method(recipe.method.name, recipe.method.options)
    check_student_source(recipe.student.architecture, recipe.student.pretrained)


def run_recipe(recipe: Recipe, progress: bool = True, resume: Path | None = None):
    """Load the recipe's data and teachers (or the demo zoo) and amalgamate into a new run folder, or continue
    the run in the folder ``resume`` from its newest checkpoint; returns the result.

    Everything is checked before the run folder is created, and a run that fails before it has started
    training (its ``run.json`` not yet written) leaves no folder behind."""
    from amalgam.api import amalgamate
    from amalgam.data import load_data
    from amalgam.pipeline import RUN_FILE
    from amalgam.teachers import load_teacher
    from amalgam.zoo import build_demo_zoo

    check_recipe(recipe)
    skip = recipe.data.skip_unreadable
    data = load_data(recipe.data.name, image_size=recipe.data.image_size, skip_unreadable=skip)
    eval_data = load_data(recipe.data.eval, role="eval", skip_unreadable=skip) if recipe.data.eval is not None else None
    if recipe.teachers:
        teachers = [
            load_teacher(t.source, revision=t.revision, class_names=t.class_names, name=t.name,
                         trust_remote_code=t.trust_remote_code)
            for t in recipe.teachers
        ]
    else:
        teachers = [load_teacher(folder) for folder in build_demo_zoo(progress=progress)]
    if progress:
        for teacher in teachers:
            print(f"teacher {teacher!r}  from {teacher.describe()['source']}")
    run_dir = resume if resume is not None else create_run_dir(recipe)
    if resume is None:
        (run_dir / RECIPE_FILE).write_text(json.dumps(recipe.to_dict(), indent=2))
    try:
        return amalgamate(
            teachers,
            student=recipe.student.architecture,
            student_pretrained=recipe.student.pretrained,
            data=data,
            eval_data=eval_data,
            method=recipe.method.name,
            method_options=recipe.method.options,
            label_mapping=recipe.label_mapping or None,
            labeled_fraction=recipe.data.labeled_fraction,
            student_input_size=recipe.student.input_size,
            train=recipe.train,
            run_dir=run_dir,
            resume=resume is not None,
            progress=progress,
        )
    except BaseException:
        if resume is None and not (run_dir / RUN_FILE).exists():  # refused while planning: nothing to keep
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def demo_recipe(name: str, progress: bool = True) -> Recipe:
    """The recipe of a built-in demo (``amalgam.zoo.DEMOS``), its teachers trained first if they are not yet."""
    from amalgam.zoo import DEMOS

    if name not in DEMOS:
        raise RecipeError(f"--demo {name!r}: the built-in demos are {sorted(DEMOS)} (`amalgam run` alone: digits)")
    demo = DEMOS[name]
    recipe = Recipe(teachers=[TeacherEntry(str(folder)) for folder in demo.teacher_folders(progress)])
    recipe.data = DataSection(name=demo.data, labeled_fraction=demo.labeled_fraction)
    recipe.method.name = demo.method
    recipe.train = dataclasses.replace(recipe.train, **demo.train)
    return recipe


def json_object(text: str) -> dict[str, Any]:
    """A command-line JSON object (``--method-options``); anything else is argparse's error, exit status 2.

    >>> json_object('{"class_prior": "uniform"}')
    {'class_prior': 'uniform'}
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err.msg} at character {err.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"temperature\": 2}}', got {text!r}")
    return value


def apply_flags(recipe: Recipe, args: argparse.Namespace) -> None:
    """The command line's options over the recipe's values, checked as the recipe's are."""
    try:  # replace() runs each section's checks again
        if args.teacher:
            recipe.teachers = [TeacherEntry(source) for source in args.teacher]
        data = {"name": args.data, "labeled_fraction": args.labeled_fraction, "eval": args.eval_data,
                "skip_unreadable": args.skip_unreadable or None}
        recipe.data = dataclasses.replace(recipe.data, **{k: v for k, v in data.items() if v is not None})
        if args.method is not None:
            recipe.method = dataclasses.replace(recipe.method, name=args.method)
        if args.method_options is not None:  # over the recipe's, key by key
            recipe.method = dataclasses.replace(recipe.method, options={**recipe.method.options,
                                                                        **args.method_options})
        student = {"architecture": args.student, "pretrained": args.student_pretrained or None}
        recipe.student = dataclasses.replace(recipe.student, **{k: v for k, v in student.items() if v is not None})
        train = {"epochs": args.epochs, "mixed_precision": args.mixed_precision, "augment": args.augment,
                 "augment_views": args.augment_views, "num_workers": args.num_workers}
        recipe.train = dataclasses.replace(recipe.train, **{k: v for k, v in train.items() if v is not None})
    except ValueError as err:
        raise RecipeError(f"command line: {err}") from None
    if args.out is not None:
        recipe.output.dir = args.out


def _quiet_libraries() -> None:
    """``--quiet``: the libraries' own progress bars too (transformers' weight loading, datasets' file scans)."""
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _cmd_run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.quiet:
        _quiet_libraries()
    resume = Path(args.resume) if args.resume is not None else None
    if args.demo is not None and (args.recipe or resume is not None):
        raise RecipeError("--demo runs a built-in recipe: give it without a recipe file or --resume")
    if args.recipe:
        recipe = load_recipe(args.recipe)
    elif resume is not None:
        saved = resume / RECIPE_FILE
        if not saved.is_file():
            raise RecipeError(f"--resume {args.resume}: {saved} not found (it is written by `amalgam run`); pass the "
                              "recipe the run was started with: amalgam run RECIPE --resume RUN_DIR")
        recipe = parse_recipe(json.loads(saved.read_text()))
    elif args.demo is not None:
        recipe = demo_recipe(args.demo, progress=not args.quiet)
    else:
        recipe = Recipe()
    apply_flags(recipe, args)
    result = run_recipe(recipe, progress=not args.quiet, resume=resume)
    print()
    print(result.table())
    print(f"\nstudent, metrics.json and run.json saved in {result.run_dir}")
    print(f"wall time {time.perf_counter() - started:.1f} s")
    return 0


def _cmd_methods(_args: argparse.Namespace) -> int:
    from amalgam.methods import available_methods, method_options
    from amalgam.methods.registry import method_choices

    for family in ("targets", "features", "heads", "custom"):
        methods = available_methods(family)
        if methods:
            print(f"[{family}]")
        for name, cls in methods.items():
            choices = method_choices(name)
            options = ", ".join(f"{k}={v!r}" + (f" (one of {', '.join(map(repr, choices[k]))})" if k in choices else "")
                                for k, v in method_options(name).items()) or "no options"
            print(f"{name}\n    {cls.summary}\n    paper: {cls.paper}\n    options: {options}")
    return 0


def _cmd_teacher(args: argparse.Namespace) -> int:
    from amalgam.teachers import load_teacher

    teacher = load_teacher(args.source, revision=args.revision)
    print(json.dumps({**teacher.describe(), "taps": teacher.tap_names()}, indent=2))
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from amalgam.knowledge import knowledge_root, verify_knowledge_cache

    root = Path(args.root) if args.root else knowledge_root()
    damaged = verify_knowledge_cache(root)
    for folder, problem in damaged.items():
        print(f"damaged, removed: {folder.name}: {problem}")
    kept = [f for f in root.iterdir() if f.is_dir() and not f.name.startswith(".")] if root.is_dir() else []
    print(f"{len(kept)} teacher caches in {root} match their checksums; {len(damaged)} damaged ones removed "
          "(computed again by the next run that needs them)")
    return 1 if damaged else 0


def _cmd_push(args: argparse.Namespace) -> int:
    from amalgam.publish import push_run

    result = push_run(args.run_dir, args.repo_id, private=args.private, demo=args.demo, timm_export=args.timm,
                      space_id=args.space_id, license=args.license)
    print(f"model: {result.model_url} ({result.model_news})")
    if result.space_url:
        print(f"space: {result.space_url} ({result.space_news})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amalgam", description="Amalgamate several teachers into one student.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run an amalgamation (default: demo teachers on digits)")
    run.add_argument("recipe", nargs="?", help="a .toml or .yaml recipe (see amalgam.recipe); optional")
    run.add_argument("--demo", metavar="NAME", help="a built-in demo instead of a recipe: fashion-mnist (its "
                     "teachers are trained once, a few minutes); without recipe or demo: the digits demo")
    run.add_argument("--teacher", action="append", metavar="SOURCE",
                     help="a teacher (Hub id or folder), repeated for each; replaces the recipe's teachers")
    run.add_argument("--data", help="digits | fashion-mnist | a datasets id | an image folder")
    run.add_argument("--eval-data", metavar="DATA", help="labeled data to measure the student on (default: the "
                     "test split of --data; without labels anywhere the run is measured label-free)")
    run.add_argument("--skip-unreadable", action="store_true", help="leave out image files that cannot be read "
                     "(counted in the metrics' skipped_images) instead of stopping")
    run.add_argument("--method", help="a registered method (`amalgam methods` lists them)")
    run.add_argument("--method-options", type=json_object, metavar="JSON",
                     help="the method's options as a JSON object, over the recipe's: "
                          "'{\"class_prior\": \"uniform\"}' (`amalgam methods` lists each method's)")
    run.add_argument("--labeled-fraction", type=float, metavar="F", help="the share of labels the method may use")
    run.add_argument("--student", metavar="ARCH", help="the student: a timm architecture (from scratch), or a "
                     "pretrained timm body to start from: hf-hub:org/name[@rev] or a timm folder")
    run.add_argument("--student-pretrained", action="store_true",
                     help="start the timm architecture from timm's pretrained weights (pulled from the Hub)")
    run.add_argument("--epochs", type=int, help="override the recipe's train.epochs")
    run.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"),
                     help="override the recipe's train.mixed_precision (fp16 needs a GPU)")
    run.add_argument("--augment", metavar="NAMES", help="consistent augmentation, comma-separated: crop, flip, "
                     "mixup, cutmix (student and teachers see the same view)")
    run.add_argument("--augment-views", type=int, metavar="K", help="views per image with --augment (default 4; "
                     "the knowledge cache stores all K)")
    run.add_argument("--num-workers", type=int, metavar="N",
                     help="DataLoader worker processes (default: from the CPU count; 0 for in-memory data)")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--out", help="override the recipe's output.dir (default: runs)")
    where.add_argument("--resume", metavar="RUN_DIR",
                       help="continue the run in RUN_DIR from its newest checkpoint (its saved recipe, unless a "
                            "recipe is given: it must be the one the run was started with)")
    run.add_argument("--quiet", action="store_true", help="no progress output, only the final table")
    run.set_defaults(func=_cmd_run)
    methods = commands.add_parser("methods", help="list the registered methods and their options")
    methods.set_defaults(func=_cmd_methods)
    teacher = commands.add_parser("teacher", help="load a teacher and show its classes, input and taps")
    teacher.add_argument("source", help="hf-hub:org/name, org/name, or a folder")
    teacher.add_argument("--revision")
    teacher.set_defaults(func=_cmd_teacher)
    cache = commands.add_parser("cache", help="the knowledge cache of teacher outputs")
    cache.add_argument("action", choices=("verify",), help="verify: read every cache whole against its checksums")
    cache.add_argument("--root", help="the cache folder (default: $AMALGAM_HOME/knowledge)")
    cache.set_defaults(func=_cmd_cache)
    push = commands.add_parser("push", help="publish a run's student to the Hugging Face Hub, with a model card")
    push.add_argument("run_dir", help="a run folder (written by `amalgam run` or amalgamate(run_dir=...))")
    push.add_argument("repo_id", help="the model repo, org/name (created if needed)")
    push.add_argument("--private", action="store_true", help="create the repos private")
    push.add_argument("--demo", action="store_true", help="also publish a Gradio Space (REPO_ID-demo)")
    push.add_argument("--space-id", help="the Space's repo id (implies --demo)")
    push.add_argument("--timm", action="store_true", help="timm's format: loads with timm.create_model alone")
    push.add_argument("--license", default=DEFAULT_LICENSE, help=f"the card's license id (default {DEFAULT_LICENSE})")
    push.set_defaults(func=_cmd_push)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # amalgam's own errors are ValueErrors too; a traceback helps no user here
        print(f"amalgam: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
