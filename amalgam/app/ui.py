"""The Gradio page: choose teachers, data and method; run and watch; try the student; publish it.

Every handler catches amalgam's errors and shows them in the page (a toast and a message line), so a bad input
never ends in a stack trace and the app keeps serving.
"""

from __future__ import annotations

import dataclasses
import html
import logging
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
import pandas as pd

from amalgam.api import DEFAULT_STUDENT
from amalgam.app.data import DATA_KINDS, HUB_OR_FOLDER, ZIP_UPLOAD, data_source
from amalgam.app.paths import PathPolicy
from amalgam.app.predict import Tryout, drawing_to_image, has_dark_background, sample_image
from amalgam.app.runs import (
    FINISHED, QUEUED, RUNNING, RequestError, RunManager, RunRequest, RunState, archive_run, list_runs, read_outcome,
    read_run, run_folder,
)
from amalgam.app.teachers import TEACHER_COLUMNS, teacher_rows, union_markdown
from amalgam.app.views import (
    PER_CLASS_COLUMNS, RUN_COLUMNS, accuracy_figure, answer_markdown, compare_figure, confusion_figure,
    loss_figure, method_markdown, method_options_json, parse_method_options, per_class_frame, progress_html,
    results_frame, results_markdown, runs_frame,
)
from amalgam.data.augment import AUGMENTATIONS
from amalgam.engine.label_free import student_score
from amalgam.errors import AmalgamError
from amalgam.methods import available_methods

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often a watched run's page is refreshed
ANSWER_COLUMNS = ["model", "top classes", "milliseconds"]
# where each RunRequest field's problem is shown on the Setup tab: under the teachers, the method options, the
# labeled fraction and epochs row, the learning rate and student row, and the augmentation
PROBLEM_SLOTS = {"teachers": 0, "method_options": 1, "labeled_fraction": 2, "epochs": 2, "lr": 3, "student": 3,
                 "augment": 4}
# the Setup tab's fields a reload keeps (in the browser's storage), in the order of the page's inputs
KEPT_FIELDS = ("data_kind", "data_text", "eval_text", "method", "options", "labeled", "epochs", "lr", "student",
               "augment")
CLOSE_TOASTS = "() => document.querySelectorAll('[data-testid=toast-close]').forEach((b) => b.click())"
NO_RUN = "*No run chosen yet: start one, or choose a finished run in the Run tab.*"
# Gradio 6 takes a stylesheet only at launch(): app.py passes this one
APP_CSS = """
#try-image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
@media (max-width: 600px) {
  /* Phones: every tab stays in the bar. Gradio moves the tabs that its hidden copy of the bar says do not fit
     into a "..." menu; that copy is shrunk so that all fit, and the real bar wraps if it must. */
  .tab-wrapper .tab-container.visually-hidden button { font-size: 1px !important; padding: 0 !important; }
  .tab-wrapper { height: auto !important; padding-bottom: 0 !important; }
  .tab-wrapper [role=tablist] { flex-wrap: wrap; height: auto; row-gap: 2px; }
  .tab-wrapper [role=tablist] button { padding: 4px 7px; }
  /* tables of many columns scroll sideways with readable columns instead of one letter per line */
  .wide-table .table-wrap table { width: max-content !important; min-width: 100%; }
  .wide-table .table-wrap th, .wide-table .table-wrap td { min-width: 5em; max-width: 16em; }
  /* the results' three columns share the width (Gradio sizes columns in pixels for their content) */
  #results-table table { width: 100% !important; table-layout: fixed; }
  #results-table th, #results-table td { width: 30% !important; min-width: 0 !important; max-width: none !important; }
  #results-table th:first-child, #results-table td:first-child { width: 42% !important; }
  #results-table th:last-child, #results-table td:last-child { width: 28% !important; }
  #results-table span { overflow-wrap: anywhere; }
}
"""


def _error(err: Exception) -> str:
    """Show ``err`` as a toast, and return it as the message line's Markdown. amalgam's own errors (and value
    errors: a field left empty) say what to do; anything else is logged with its traceback for the operator and
    shown by its type and message, never as Gradio's generic "the upstream app has raised an exception"."""
    if isinstance(err, (AmalgamError, ValueError, TypeError)):
        text = str(err)
    else:
        logger.exception("app: unexpected error", exc_info=err)
        text = f"unexpected {type(err).__name__}: {err} (the server's log has the details)"
    gr.Warning(text)
    return f"**Error:** {html.escape(text, quote=False)}"


def refuse_unreadable(image: gr.Image) -> gr.Image:
    """``image`` whose upload, when it is not a picture, is a message in the page, not a failed request.

    Its ``preprocess`` is wrapped on the instance: a subclass of a Gradio component would make Gradio write a
    ``.pyi`` stub beside this file at every import.
    """
    decode = image.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return decode(payload)
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for unreadable files
            name = getattr(payload, "orig_name", None) or "the uploaded file"
            raise gr.Error(f"{name} is not a picture that can be read ({type(err).__name__}); upload a PNG, JPEG "
                           "or WebP image") from None

    image.preprocess = preprocess
    return image


def build_app(runs_dir: str | Path = "runs", manager: RunManager | None = None,
              paths: PathPolicy | None = None) -> gr.Blocks:
    """The app as a ``gr.Blocks``; runs are saved under ``runs_dir`` and listed from there at every page load.

    ``manager`` runs the amalgamations (default: one at a time, the others queued); pass your own to choose
    the concurrency limit, or to shut it down when the app closes. ``paths`` says which server folders the page
    may name as teachers or data (default: any; ``app.py`` refuses them when it serves beyond 127.0.0.1, see
    :class:`~amalgam.app.paths.PathPolicy`).

    Example:
        >>> app = build_app("runs")  # doctest: +SKIP
        >>> app.launch(server_name="127.0.0.1", prevent_thread_lock=True)  # doctest: +SKIP
    """
    runs_dir = Path(runs_dir)
    manager = manager or RunManager(runs_dir)
    paths = paths or PathPolicy()
    uploads = runs_dir / ".uploads"
    catalog = manager.catalog
    tryout = Tryout(catalog)
    watching: dict[str, str] = {}  # session -> the run its page shows; a newer watch ends the older one

    def run_choices() -> list[tuple[str, str]]:
        saved = {summary.run_id: summary.label for summary in list_runs(runs_dir)}
        for state in manager.live():  # a queued run has no folder yet; a running one is not finished
            # not its status, which would go stale in the list (queued, then running): the Run tab shows that
            saved[state.run_id] = f"{state.run_id} · in progress"
        return [(label, run_id) for run_id, label in sorted(saved.items(), reverse=True)]

    # ---- teachers
    def show_teachers(sources: list[str], message: str) -> tuple:
        teachers = [catalog.load(source) for source in sources]
        return (sources, pd.DataFrame(teacher_rows(teachers), columns=TEACHER_COLUMNS), union_markdown(teachers),
                gr.Dropdown(choices=list(sources), value=None), message)

    def add_teacher(source: str, sources: list[str]) -> tuple:
        try:
            paths.check(source or "", "teacher")
            teacher = catalog.load(source)
            if source.strip() in sources:
                return show_teachers(sources, f"**{teacher.name}** is already chosen.")
            return show_teachers([*sources, source.strip()], f"Added teacher **{teacher.name}**.")
        except Exception as err:  # noqa: BLE001 - shown in the page (see _error)
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), _error(err)

    def add_demo_teachers(sources: list[str], progress: gr.Progress = gr.Progress()) -> tuple:
        try:
            progress(0.0, desc="the demo teachers: trained on first use (about a minute on 2 CPU cores), then loaded")
            new = [source for source in catalog.demo_sources() if source not in sources]
            return show_teachers([*sources, *new], f"Added the {len(new)} demo teachers (digits 0-4 and 5-9).")
        except Exception as err:  # noqa: BLE001 - shown in the page (see _error)
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), _error(err)

    def remove_teacher(source: str | None, sources: list[str]) -> tuple:
        if not source or source not in sources:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), _error(AmalgamError("choose a chosen teacher to remove"))
        return show_teachers([s for s in sources if s != source], f"Removed teacher `{source}`.")

    # ---- data and method
    def choose_data(kind: str) -> tuple:
        return gr.Textbox(visible=kind == HUB_OR_FOLDER), gr.File(visible=kind == ZIP_UPLOAD)

    def choose_method(name: str, kept: dict | None = None) -> tuple[str, str]:
        # the options this browser kept for this method (see restore) survive the change a restore sets off
        kept = kept or {}
        options_text = kept["options"] if kept.get("method") == name and kept.get("options") else None
        return method_markdown(name), options_text or method_options_json(name)

    # ---- the page's state, kept in the browser across a reload
    def remember(sources: list[str], *values: Any) -> dict:
        return {"sources": list(sources), **dict(zip(KEPT_FIELDS, values))}

    def restore(kept: dict | None, run_id: str | None) -> tuple:
        kept = kept or {}
        chosen, lost = [], []
        for source in kept.get("sources", []):
            try:
                catalog.load(source)
                chosen.append(source)
            except Exception:  # noqa: BLE001 - a teacher gone since: said in the page, the rest restored
                lost.append(source)
        note = f"Kept from your last visit: {len(chosen)} teacher(s)." if chosen else ""
        if lost:
            note += f" No longer available: {', '.join(lost)}."
        live = [state.run_id for state in manager.live()]  # reattach the page to the newest run still going
        picker = gr.Dropdown(choices=run_choices(), value=live[-1] if live and not run_id else run_id)
        fields = [kept[name] if name in kept else gr.skip() for name in KEPT_FIELDS]
        return (*show_teachers(chosen, note), *fields, picker)

    # ---- runs
    def start_run(sources: list[str], kind: str, text: str, upload: str | None, method: str, options: str,
                  labeled_fraction: float | None, epochs: float | None, lr: float | None, student: str,
                  eval_text: str = "", augment: list[str] | None = None) -> tuple:
        beside = [""] * (max(PROBLEM_SLOTS.values()) + 1)  # each field's problem, shown under it
        try:
            for chosen in sources:
                paths.check(chosen, "teacher")
            if kind == HUB_OR_FOLDER:
                paths.check(text or "", "data")
            paths.check((student or "").strip(), "student")  # a pretrained student may be a server folder too
            eval_data = (eval_text or "").strip() or None
            if eval_data is not None:
                paths.check(eval_data, "evaluation data")
            request = RunRequest(
                teachers=tuple(sources), data="", method=method, method_options=parse_method_options(options),
                labeled_fraction=labeled_fraction, epochs=epochs, lr=lr,
                student=(student or "").strip() or DEFAULT_STUDENT, eval_data=eval_data,
                augment=",".join(augment or []),
            )
            # everything else first: an upload is unpacked only for a request that can run
            request.check([catalog.load(source) for source in sources])
            state = manager.submit(dataclasses.replace(request, data=data_source(kind, text, upload, uploads)))
        except RequestError as err:
            for name, problem in err.problems.items():
                slot = PROBLEM_SLOTS.get(name, 0)
                beside[slot] = "\n\n".join(filter(None, [beside[slot], f"**{html.escape(problem, quote=False)}**"]))
            return (gr.skip(), gr.skip(), _error(AmalgamError("fix the fields marked below before starting")),
                    *beside)
        except Exception as err:  # noqa: BLE001 - shown in the page (see _error)
            return gr.skip(), gr.skip(), _error(err), *beside
        return (gr.Dropdown(choices=run_choices(), value=state.run_id), gr.Tabs(selected="run"),
                f"Started run **{state.run_id}**; watch it in the *Run* tab.", *beside)

    def saved_view(run_id: str | None) -> tuple:
        blank = (loss_figure([]), accuracy_figure([]), "", None, pd.DataFrame(columns=PER_CLASS_COLUMNS), None)
        idle = gr.Button(interactive=False)  # nothing to cancel on a run that is over
        if not run_id:
            return ("", "Start a run, or choose one from the list.", *blank, NO_RUN, NO_RUN, idle)
        try:
            folder = run_folder(runs_dir, run_id)
            outcome = read_outcome(folder)
            planned = outcome is None or (folder / "run.json").is_file()  # else it failed before it was planned
            description, metrics = read_run(folder) if planned else (None, None)
        except Exception as err:  # noqa: BLE001 - shown in the page (see _error)
            return ("", _error(err), *blank, NO_RUN, NO_RUN, idle)
        if metrics is None:
            why = (f"{outcome['status']}: {html.escape(str(outcome['message']), quote=False)}" if outcome
                   else "unfinished (interrupted)")
            note = f"Run **{run_id}** {why}. It has no student."
            return ("", note, *blank, note, note, idle)
        history = metrics.get("history", [])
        measure, score = student_score(metrics)
        chosen = f"Run **{run_id}** · student `{metrics['student']['architecture']}` · {measure} {score:.4f}"
        labeled = "confusion" in metrics["student"]  # a run measured without labels has no per-class view
        return (
            progress_html(1.0, f"finished · student {measure} {score:.4f}"),
            f"Run **{run_id}**: finished, student {measure} **{score:.4f}**.",
            loss_figure(history), accuracy_figure(history, metrics), results_markdown(description, metrics),
            results_frame(metrics), per_class_frame(description, metrics) if labeled else blank[4],
            confusion_figure(metrics, description["label_space"]["classes"]) if labeled else None,
            chosen, chosen, idle,
        )

    def live_view(state: RunState) -> tuple:
        status = state.describe()
        waiting = f"Run **{state.run_id}** is not finished yet."
        return (progress_html(state.fraction, status), f"Run **{state.run_id}**: {html.escape(status, quote=False)}",
                loss_figure(state.history), accuracy_figure(state.history), "", None,
                pd.DataFrame(columns=PER_CLASS_COLUMNS), None, waiting, waiting,
                gr.Button(interactive=state.status in (QUEUED, RUNNING)))

    def watch_run(run_id: str | None, request: gr.Request) -> Iterator[tuple]:
        session = request.session_hash or ""
        watching[session] = run_id or ""
        state = manager.get(run_id) if run_id else None
        if state is None:
            yield saved_view(run_id)
            return
        shown = None
        while watching.get(session) == run_id:
            ended = state.done  # read first: a run's status is final before it is marked ended
            if (state.status, len(state.history)) != shown:
                shown = (state.status, len(state.history))
                view = saved_view(run_id) if state.status == FINISHED else live_view(state)
                if watching.get(session) != run_id:  # the page moved on while this view was made
                    return
                yield view
            if ended:
                return
            state.ended.wait(POLL_SECONDS)

    def cancel_run(run_id: str | None) -> str:
        if run_id and manager.cancel(run_id):
            return f"Cancelling run **{run_id}**: it stops before its next training batch."
        return f"Run **{run_id or '(none)'}** is not queued or running here, so there is nothing to cancel."

    def refresh_runs(run_id: str | None) -> Any:
        return gr.Dropdown(choices=run_choices(), value=run_id)

    # ---- all runs
    def runs_table() -> tuple:
        summaries = list_runs(runs_dir)
        return runs_frame(summaries), gr.Dropdown(choices=[s.run_id for s in summaries])

    def compare_runs(run_ids: list[str] | None) -> tuple:
        try:
            if len(run_ids or []) < 2:
                raise AmalgamError("choose two or more runs to compare")
            histories = {}
            for run_id in run_ids:
                _, metrics = read_run(run_folder(runs_dir, run_id))
                if metrics is None:
                    raise AmalgamError(f"run {run_id} has no student (it did not finish): choose finished runs")
                histories[run_id] = metrics.get("history", [])
        except Exception as err:  # noqa: BLE001 - shown in the page (see _error)
            return None, gr.skip(), _error(err)
        chosen = [s for s in list_runs(runs_dir) if s.run_id in histories]
        return compare_figure(histories), runs_frame(chosen), f"Comparing {len(chosen)} runs."

    def delete_runs(run_ids: list[str] | None) -> tuple:
        try:
            if not run_ids:
                raise AmalgamError("choose the runs to delete first (nothing was deleted)")
            for run_id in run_ids:
                manager.delete(run_id)
        except Exception as err:  # noqa: BLE001 - shown in the page (see _error)
            return (*runs_table(), _error(err))
        return (*runs_table(), f"Deleted {len(run_ids)} run(s): {', '.join(run_ids)}.")

    # ---- try it
    def predict(run_id: str | None, image: Any) -> tuple:
        try:
            if image is None:
                raise AmalgamError("upload an image (or take a sample test image) first")
            answers = tryout.predict(run_folder(runs_dir, run_id), image)
        except Exception as err:  # noqa: BLE001 - shown in the page (see _error)
            return None, pd.DataFrame(columns=ANSWER_COLUMNS), _error(err)
        rows = [[answer.model, ", ".join(f"{name} ({p:.2f})" for name, p in answer.top) or answer.error,
                 round(answer.milliseconds, 1)] for answer in answers]
        return dict(answers[0].top), pd.DataFrame(rows, columns=ANSWER_COLUMNS), answer_markdown(*answers[0].top[0])

    def classify_drawing(run_id: str | None, drawing: dict | None) -> tuple:
        """The sketch as a picture like the run's data (shown in the image box: what the models see), classified."""
        try:
            description, _ = read_run(run_folder(runs_dir, run_id))
            try:
                dark = has_dark_background(str(description["data"]["name"]))
            except (AmalgamError, OSError):  # data that cannot be read back here: keep the strokes as drawn
                dark = False
            picture = drawing_to_image(list((drawing or {}).get("layers") or []), dark)
        except Exception as err:  # noqa: BLE001 - shown in the page (see _error)
            return gr.skip(), None, pd.DataFrame(columns=ANSWER_COLUMNS), _error(err), ""
        return picture, *predict(run_id, picture), ""

    def sample(run_id: str | None) -> tuple:
        try:
            description, _ = read_run(run_folder(runs_dir, run_id))
            image, label = sample_image(str(description["data"]["name"]))
        except Exception as err:  # noqa: BLE001 - shown in the page (see _error)
            raise gr.Error(str(err)) from None  # a toast, and the chained classification does not run
        return image, f"A test image of `{description['data']['name']}`; its true class is **{label}**."

    # ---- publish
    def preview_card(run_id: str | None, repo_id: str, demo: bool) -> tuple:
        from amalgam.publish import load_run, render_model_card, split_card
        from amalgam.publish.push import check_target

        try:
            repo_id = (repo_id or "").strip() or "your-name/student"
            card = render_model_card(load_run(run_folder(runs_dir, run_id)), repo_id,
                                     space_id=check_target(repo_id, bool(demo), None))
        except Exception as err:  # noqa: BLE001 - shown in the page (see _error)
            return gr.skip(), _error(err)
        return split_card(card)[1], f"The model card `{repo_id}` would get (its metadata header left out):"

    def download_run(run_id: str | None) -> tuple:
        try:
            archive = archive_run(run_folder(runs_dir, run_id))
        except Exception as err:  # noqa: BLE001 - shown in the page (see _error)
            return gr.skip(), _error(err)
        return gr.File(str(archive), visible=True), f"`{archive.name}`: unzip it and load `student/` with " \
            "`Student.from_pretrained`."

    def publish(run_id: str | None, repo_id: str, token: str, private: bool, demo: bool) -> str:
        from amalgam.publish import push_run

        token = (token or "").strip()
        try:
            if not token:  # never the server's own token: whoever opens the page would publish as its owner
                raise AmalgamError("enter a Hugging Face token with write access (hf.co/settings/tokens)")
            result = push_run(run_folder(runs_dir, run_id), (repo_id or "").strip(), token=token,
                              private=bool(private), demo=bool(demo))
        except Exception as err:  # noqa: BLE001 - any failure is shown in the page, never with the token
            return _error(AmalgamError(str(err).replace(token, "<token>") if token else str(err)))
        links = f"Published the student: [{result.model_url}]({result.model_url}) ({result.model_news})"
        if result.space_url:
            links += f"  \nDemo Space: [{result.space_url}]({result.space_url}) ({result.space_news})"
        return links

    methods = list(available_methods())
    with gr.Blocks(title="amalgam") as app:
        gr.Markdown("# amalgam\nDistil several pretrained teachers, each with its own classes, into one small "
                    "student: choose teachers, data and a method, watch the run, try the student, publish it.")
        sources = gr.State([])
        kept = gr.BrowserState({}, storage_key="amalgam-setup")  # the Setup tab across reloads (see restore)
        with gr.Tabs() as tabs:
            with gr.Tab("1 · Setup", id="setup"):
                with gr.Row():
                    with gr.Column(scale=3):
                        gr.Markdown("### Teachers")
                        with gr.Row():
                            source = gr.Textbox(label="Hub id or model folder", scale=4,
                                                placeholder="hf-hub:org/name, org/name@revision or ./zoo/teacher")
                            add = gr.Button("Add teacher", scale=1)
                        with gr.Row():
                            add_demo = gr.Button("Add the two demo teachers (digits)", variant="secondary")
                            clear = gr.Button("Clear teachers", variant="secondary")
                        with gr.Row():
                            removed = gr.Dropdown([], label="a chosen teacher", scale=4)
                            remove = gr.Button("Remove it", variant="secondary", scale=1)
                        teacher_message = gr.Markdown()
                        teacher_table = gr.Dataframe(pd.DataFrame(columns=TEACHER_COLUMNS), label="chosen teachers",
                                                     interactive=False, wrap=True, elem_classes="wide-table")
                        union = gr.Markdown(union_markdown([]))
                        teachers_problem = gr.Markdown(elem_classes="field-problem")
                    with gr.Column(scale=2):
                        gr.Markdown("### Data and method")
                        data_kind = gr.Radio(DATA_KINDS, value=DATA_KINDS[0], label="transfer and test data")
                        data_text = gr.Textbox(label="datasets Hub id or image folder", visible=False)
                        data_zip = gr.File(label="zip of an image folder (one sub-folder per class)",
                                           file_types=[".zip"], type="filepath", visible=False)
                        eval_text = gr.Textbox(label="evaluation data (optional: labeled Hub id, folder, digits or "
                                               "fashion-mnist; none and unlabeled data: measured label-free)")
                        method = gr.Dropdown(methods, value="soft-targets", label="method")
                        method_info = gr.Markdown(method_markdown("soft-targets"))
                        options = gr.Code(method_options_json("soft-targets"), language="json", interactive=True,
                                          label="method options (JSON)", lines=4)
                        options_problem = gr.Markdown(elem_classes="field-problem")
                        with gr.Row():
                            labeled = gr.Slider(0, 1, value=0.0, step=0.01, label="labeled fraction")
                            epochs = gr.Number(5, precision=0, minimum=1, label="epochs")
                        budget_problem = gr.Markdown(elem_classes="field-problem")
                        with gr.Row():
                            lr = gr.Number(3e-3, label="learning rate")
                            student = gr.Textbox(DEFAULT_STUDENT,
                                                 label="student (timm name, hf-hub:timm/<name> or folder)")
                        training_problem = gr.Markdown(elem_classes="field-problem")
                        augment = gr.CheckboxGroup(list(AUGMENTATIONS), value=[], label="augmentation (the "
                                                   "student and every teacher see the same view)",
                                                   info="; ".join(f"{k}: {v}" for k, v in AUGMENTATIONS.items()))
                        augment_problem = gr.Markdown(elem_classes="field-problem")
                        start = gr.Button("Start the run", variant="primary")
                        start_message = gr.Markdown()
            with gr.Tab("2 · Run", id="run"):
                with gr.Row():
                    run_picker = gr.Dropdown(run_choices(), value=None, label="run (this one, or a past one)",
                                             allow_custom_value=True, scale=4)
                    refresh = gr.Button("Refresh list", scale=1)
                    cancel = gr.Button("Cancel run", variant="stop", scale=1)
                progress = gr.HTML(elem_id="run-progress")
                status = gr.Markdown()
                with gr.Row():  # the figures carry their own titles: no label badge over them
                    loss_plot = gr.Plot(loss_figure([]), show_label=False, elem_id="loss-plot")
                    accuracy_plot = gr.Plot(accuracy_figure([]), show_label=False, elem_id="accuracy-plot")
                results = gr.Markdown()
                results_table = gr.Dataframe(label="results (the student's row highlighted)", interactive=False,
                                             wrap=True, elem_id="results-table")
                with gr.Row():
                    per_class = gr.Dataframe(pd.DataFrame(columns=PER_CLASS_COLUMNS), label="per-class accuracy",
                                             interactive=False, elem_classes="wide-table")
                    confusion = gr.Plot(show_label=False)
            with gr.Tab("3 · Try", id="try"):
                try_run = gr.Markdown(NO_RUN)
                with gr.Row():
                    with gr.Column():
                        image = refuse_unreadable(gr.Image(type="pil", format="png", label="image",
                                                           sources=["upload", "clipboard"], height=260,
                                                           elem_id="try-image"))
                        with gr.Row():
                            take_sample = gr.Button("Sample a test image")
                            classify = gr.Button("Classify", variant="primary")
                        sample_note = gr.Markdown()
                        with gr.Accordion("... or draw one", open=False):
                            sketch = gr.Sketchpad(type="pil", image_mode="RGBA", canvas_size=(280, 280),
                                                  brush=gr.Brush(default_size=18, colors=["#000000"],
                                                                 color_mode="fixed"),
                                                  layers=False, label="draw it large, filling the square",
                                                  elem_id="try-sketch")
                            classify_sketch = gr.Button("Classify the drawing")
                    with gr.Column():
                        student_answer = gr.Label(num_top_classes=3, label="student")
                        answers = gr.Dataframe(pd.DataFrame(columns=ANSWER_COLUMNS), label="student and teachers",
                                               interactive=False, wrap=True)
                        try_message = gr.Markdown()
            with gr.Tab("4 · Publish", id="publish"):
                publish_run = gr.Markdown(NO_RUN)
                repo_id = gr.Textbox(label="model repo id", placeholder="your-name/digits-student")
                token = gr.Textbox(label="Hugging Face token (write access; never stored)", type="password")
                with gr.Row():
                    private = gr.Checkbox(False, label="private")
                    demo = gr.Checkbox(True, label="also publish a demo Space (<repo id>-demo)")
                with gr.Row():
                    push = gr.Button("Publish", variant="primary")
                    preview = gr.Button("Preview the model card")
                    download = gr.Button("Download the student (zip)")
                publish_message = gr.Markdown()
                download_file = gr.File(label="the student, run.json and metrics.json", visible=False)
                card_preview = gr.Markdown(elem_id="card-preview")
            with gr.Tab("5 · Runs", id="runs") as runs_tab:
                all_runs = gr.Dataframe(pd.DataFrame(columns=RUN_COLUMNS), label="every run", interactive=False,
                                        wrap=True, elem_classes="wide-table")
                with gr.Row():
                    compared = gr.Dropdown([], multiselect=True, label="runs to compare (two or more)", scale=4)
                    compare = gr.Button("Compare", variant="primary", scale=1)
                    delete = gr.Button("Delete", variant="stop", scale=1)
                compare_message = gr.Markdown()
                compare_plot = gr.Plot(show_label=False, elem_id="compare-plot")
                compare_table = gr.Dataframe(pd.DataFrame(columns=RUN_COLUMNS), label="the compared runs",
                                             interactive=False, wrap=True, elem_classes="wide-table")

        # a toast is about the tab it was raised on: it closes when the user goes to another one
        tabs.select(None, None, None, js=CLOSE_TOASTS)
        teacher_outputs = [sources, teacher_table, union, removed, teacher_message]
        add.click(add_teacher, [source, sources], teacher_outputs, api_name="add_teacher")
        source.submit(add_teacher, [source, sources], teacher_outputs, api_visibility="private")
        add_demo.click(add_demo_teachers, [sources], teacher_outputs, api_name="add_demo_teachers")
        clear.click(lambda: show_teachers([], "No teachers chosen."), None, teacher_outputs, api_name="clear_teachers")
        remove.click(remove_teacher, [removed, sources], teacher_outputs, api_name="remove_teacher")
        data_kind.change(choose_data, [data_kind], [data_text, data_zip], api_visibility="private")
        method.change(choose_method, [method, kept], [method_info, options], api_name="describe_method")

        start.click(start_run, [sources, data_kind, data_text, data_zip, method, options, labeled, epochs, lr,
                                student, eval_text, augment],
                    [run_picker, tabs, start_message, teachers_problem, options_problem, budget_problem,
                     training_problem, augment_problem], api_name="start_run")
        view = [progress, status, loss_plot, accuracy_plot, results, results_table, per_class, confusion, try_run,
                publish_run, cancel]
        # Watching is a generator that polls the run; several pages may watch at once, hence no concurrency limit.
        watched = run_picker.change(watch_run, [run_picker], view, api_name="watch_run", trigger_mode="multiple",
                                    concurrency_limit=None, show_progress="hidden")
        watched.then(refresh_runs, [run_picker], [run_picker], api_visibility="private")  # its label has changed
        refresh.click(refresh_runs, [run_picker], [run_picker], api_name="list_runs")
        cancel.click(cancel_run, [run_picker], [status], api_name="cancel_run")
        kept_inputs = [data_kind, data_text, eval_text, method, options, labeled, epochs, lr, student, augment]
        for component in [sources, *kept_inputs]:
            component.change(remember, [sources, *kept_inputs], [kept], api_visibility="private")
        app.load(restore, [kept, run_picker], [*teacher_outputs, *kept_inputs, run_picker], api_visibility="private")
        runs_tab.select(runs_table, None, [all_runs, compared], api_name="runs_table")
        compare.click(compare_runs, [compared], [compare_plot, compare_table, compare_message], api_name="compare_runs")
        # the browser asks first; a refusal sends no runs, which deletes nothing
        delete.click(delete_runs, [compared], [all_runs, compared, compare_message], api_name="delete_runs",
                     js="(ids) => (ids && ids.length && confirm('Delete ' + ids.length + ' run(s) and their "
                        "students? This cannot be undone.')) ? ids : []")

        predict_inputs = [run_picker, image]
        predict_outputs = [student_answer, answers, try_message]
        classify.click(predict, predict_inputs, predict_outputs, api_name="predict")
        image.upload(predict, predict_inputs, predict_outputs, api_visibility="private")
        image.upload(lambda: "", None, [sample_note], api_visibility="private")  # the sample's true class is gone
        classify_sketch.click(classify_drawing, [run_picker, sketch], [image, *predict_outputs, sample_note],
                              api_name="classify_drawing")
        take_sample.click(sample, [run_picker], [image, sample_note], api_name="sample_image").success(
            predict, predict_inputs, predict_outputs, api_visibility="private")
        preview.click(preview_card, [run_picker, repo_id, demo], [card_preview, publish_message],
                      api_name="preview_card")
        download.click(download_run, [run_picker], [download_file, publish_message], api_name="download_run")
        # Not "public": Gradio keeps the inputs of public endpoints in the browser's run history, token included.
        push.click(publish, [run_picker, repo_id, token, private, demo], [publish_message], api_name="publish",
                   api_visibility="undocumented")
    return app
