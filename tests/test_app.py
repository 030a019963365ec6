"""The Gradio app: driven through gradio_client against the app served on 127.0.0.1 by this process, and its
logic (run queue and cancellation, run listing, zip uploads, image conversion) tested directly.

Publishing runs ``python app.py`` in a subprocess, because huggingface_hub reads HF_ENDPOINT when it is
imported: that app talks to tests/hubserver.py, lists the runs the first app saved (they survive a restart), and
must never print the token.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from amalgam.app import RunManager, RunRequest, build_app, image_to_batch, list_runs, sample_image
from amalgam.app.data import ZIP_UPLOAD, extract_image_zip
from amalgam.app.predict import batch_to_image
from amalgam.app.runs import CANCELLED, QUEUED, RequestError
from amalgam.data import load_data
from amalgam.errors import AmalgamError, DataError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hubserver import LocalHub, client_env  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DIGITS = [str(d) for d in range(10)]
TOKEN = "hf_appTestToken0123456789abcdef"
# start_run's inputs after the chosen teachers (kept in the session): data kind, Hub id or folder, zip, method,
# method options, labeled fraction, epochs, learning rate, student, evaluation data, augmentation.
DIGITS_RUN = ("digits", "", None, "soft-targets", '{"temperature": 4.0}', 0.0, 2, 0.01, "test_efficientnet", "digits",
              [])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app-runs")


@pytest.fixture(scope="module")
def client(demo_zoo, runs_dir) -> Client:
    manager = RunManager(runs_dir)
    app = build_app(runs_dir, manager)
    app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield Client(app.local_url, verbose=False)
    app.close()
    manager.shutdown()


@pytest.fixture(scope="module")
def finished_run(client, runs_dir) -> dict:
    """The two demo teachers added in the page, then a 2-epoch run on digits, watched until it ends."""
    _, union, _, message = client.predict(api_name="/add_demo_teachers")
    assert "Added the 2 demo teachers" in message and "10 classes" in union
    picker, started, *_ = client.predict(*DIGITS_RUN, api_name="/start_run")
    run_id = picker["value"]
    assert run_id in started
    updates = list(client.submit(run_id, api_name="/watch_run"))  # every state the page was shown
    progress, status, loss, accuracy, results, table, per_class, *_ = updates[-1]  # (the Cancel button: no value)
    return {"run_id": run_id, "updates": updates, "progress": progress, "status": status, "loss": loss,
            "accuracy": accuracy, "results": results, "table": table, "per_class": per_class}


def test_demo_teachers_and_union_label_space(client, finished_run):
    table, union, removable, _ = client.predict(api_name="/add_demo_teachers")  # already chosen: added once only
    assert len(removable["choices"]) == 2  # each chosen teacher can be removed on its own
    rows = {row[0]: dict(zip(table["headers"], row)) for row in table["data"]}
    assert set(rows) == {"cnn-digits-0to4", "vit-digits-5to9"}
    assert rows["cnn-digits-0to4"]["architecture"] == "test_resnet"
    assert rows["cnn-digits-0to4"]["input"] == "grey 32x32"
    assert rows["vit-digits-5to9"]["library"] == "transformers"
    assert rows["vit-digits-5to9"]["input"] == "RGB 16x16"
    assert rows["vit-digits-5to9"]["classes"] == "5, 6, 7, 8, 9"
    assert rows["cnn-digits-0to4"]["parameters"].endswith(" k")
    assert "**Union label space: 10 classes** from 2 teachers, 0 shared" in union


def test_a_run_is_watched_to_its_end_and_its_results_shown(finished_run, runs_dir):
    metrics = json.loads((runs_dir / finished_run["run_id"] / "metrics.json").read_text())
    accuracy = metrics["student"]["accuracy"]
    assert accuracy > 0.5  # chance is 0.1
    run = json.loads((runs_dir / finished_run["run_id"] / "run.json").read_text())
    assert run["data"]["eval"] == "digits" and metrics["test_samples"] == 360  # the evaluation data field
    assert f"finished, student accuracy **{accuracy:.4f}**" in finished_run["status"]
    assert 'aria-valuenow="100"' in finished_run["progress"]
    assert any("running" in update[1] for update in finished_run["updates"][:-1])  # it was watched live
    assert [record["epoch"] for record in metrics["history"]] == [1, 2]  # what the curves draw, one point each
    assert finished_run["loss"] is not None and finished_run["accuracy"] is not None
    assert "labeled (none of the labels used)" in finished_run["results"]
    table = finished_run["table"]
    student_rows = [i for i, row in enumerate(table["data"]) if row[0] == "student test_efficientnet"]
    assert [table["data"][i][1:] for i in student_rows] == [["all union classes (360 images)", f"{accuracy:.4f}"]]
    styles = table["metadata"]["styling"]  # the student's row, and only it, is highlighted
    assert [i for i, row in enumerate(styles) if any("background-color" in cell for cell in row)] == student_rows
    per_class = {row[0]: row[1:] for row in finished_run["per_class"]["data"]}
    assert set(per_class) == set(DIGITS)
    assert per_class["3"][0] == pytest.approx(metrics["student"]["per_class"]["3"], abs=1e-4)
    assert per_class["3"][1] == pytest.approx(metrics["teachers"]["cnn-digits-0to4"]["per_class"]["3"], abs=1e-4)
    assert per_class["7"][2] == "vit-digits-5to9"


def test_one_teacher_is_removed_and_the_union_shrinks(client, finished_run, demo_zoo):
    vit = str(demo_zoo[1])
    table, union, removable, message = client.predict(vit, api_name="/remove_teacher")
    try:
        assert [row[0] for row in table["data"]] == ["cnn-digits-0to4"] and "5 classes" in union
        assert [value for _, value in removable["choices"]] == [str(demo_zoo[0])]
        *_, message = client.predict(None, api_name="/remove_teacher")  # Remove pressed with none chosen
        assert "choose a chosen teacher to remove" in message
    finally:
        client.predict(api_name="/add_demo_teachers")  # the module's later tests expect both


def test_a_finished_run_downloads_as_a_loadable_student_and_previews_its_card(client, finished_run, tmp_path):
    from amalgam.students import Student

    shown, message = client.predict(finished_run["run_id"], api_name="/download_run")
    assert shown["visible"] is True  # the file box appears with the zip
    with zipfile.ZipFile(shown["value"]) as zipped:
        assert {"run.json", "metrics.json", "student/model.safetensors"} <= set(zipped.namelist())
        zipped.extractall(tmp_path)
    assert Student.from_pretrained(tmp_path / "student").class_names == DIGITS
    *_, message = client.predict("../nope", api_name="/download_run")
    assert "is not a run of this app" in message
    card, message = client.predict(finished_run["run_id"], "org/digits-student", True, api_name="/preview_card")
    assert 'Student.from_pretrained("org/digits-student")' in card and "org/digits-student-demo" in card
    assert "pipeline_tag" not in card  # the metadata header is left out of the preview
    _, message = client.predict(finished_run["run_id"], "not a repo id", False, api_name="/preview_card")
    assert "Error" in message


def test_a_run_is_deleted_from_the_runs_tab_but_a_live_one_is_refused(client, finished_run, runs_dir, demo_zoo):
    copy = runs_dir / "run-to-delete"
    shutil.copytree(runs_dir / finished_run["run_id"], copy)
    client.predict(api_name="/runs_table")
    table, picker, message = client.predict([copy.name], api_name="/delete_runs")
    assert not copy.exists() and "Deleted 1 run(s): run-to-delete" in message
    assert copy.name not in [row[0] for row in table["data"]] and finished_run["run_id"] in [r[0] for r in table["data"]]
    *_, message = client.predict([], api_name="/delete_runs")
    assert "nothing was deleted" in message
    manager = RunManager(runs_dir / "live")
    live = manager.submit(RunRequest(tuple(map(str, demo_zoo)), "digits", epochs=200))
    try:
        with pytest.raises(AmalgamError, match="cancel it before deleting it"):
            manager.delete(live.run_id)
    finally:
        manager.shutdown()


def test_the_runs_tab_lists_every_run_with_its_gaps_and_compares_them(client, finished_run, runs_dir):
    table, picker = client.predict(api_name="/runs_table")
    rows = {row[0]: dict(zip(table["headers"], row)) for row in table["data"]}
    metrics = json.loads((runs_dir / finished_run["run_id"] / "metrics.json").read_text())
    row = rows[finished_run["run_id"]]
    assert (row["method"], row["data"], row["labels used"], row["status"]) == ("soft-targets", "digits", "none",
                                                                               "finished")
    student = metrics["student"]["accuracy"]
    assert row["vs teachers' mean"] == pytest.approx(student - metrics["ensemble"]["accuracy"], abs=1e-4)
    assert row["vs oracle"] == pytest.approx(student - metrics["oracle"]["accuracy"], abs=1e-4)
    assert finished_run["run_id"] in [value for _, value in picker["choices"]]
    *_, message = client.predict([finished_run["run_id"]], api_name="/compare_runs")
    assert "choose two or more runs" in message
    copy = runs_dir / "copy-of-the-run"  # a second finished run: the same folder under another id
    shutil.copytree(runs_dir / finished_run["run_id"], copy)
    try:
        client.predict(api_name="/runs_table")  # as opening the tab again does: the new run becomes a choice
        figure, compared, message = client.predict([finished_run["run_id"], copy.name], api_name="/compare_runs")
    finally:
        shutil.rmtree(copy)
    assert message == "Comparing 2 runs." and figure is not None
    assert sorted(row[0] for row in compared["data"]) == sorted([finished_run["run_id"], copy.name])


def test_the_student_and_teachers_classify_an_uploaded_image(client, finished_run, tmp_path):
    image, label = sample_image("digits", index=5)
    path = tmp_path / "digit.png"
    image.save(path)
    student, answers, message = client.predict(finished_run["run_id"], handle_file(str(path)), api_name="/predict")
    assert student["label"] in DIGITS
    assert f"The student says **{student['label']}**" in message
    models = [row[0] for row in answers["data"]]
    assert models == ["student test_efficientnet", "teacher cnn-digits-0to4", "teacher vit-digits-5to9"]
    teacher_top = {row[0]: row[1].split(" ")[0] for row in answers["data"]}
    assert teacher_top["teacher cnn-digits-0to4"] in DIGITS[:5]  # each teacher answers in its own classes
    assert teacher_top["teacher vit-digits-5to9"] in DIGITS[5:]
    assert all(row[2] > 0 for row in answers["data"])  # milliseconds each took

    sample_path, note = client.predict(finished_run["run_id"], api_name="/sample_image")
    assert re.search(r"its true class is \*\*\d\*\*", note) and Path(sample_path).is_file()


def test_a_drawing_is_framed_like_the_data_and_classified_as_that_picture(client, finished_run, tmp_path):
    from PIL import Image, ImageDraw

    from amalgam.app.predict import drawing_to_image

    stroke = Image.new("RGBA", (280, 280), (0, 0, 0, 0))  # a "1" drawn in black, off-centre and small
    ImageDraw.Draw(stroke).line([(200, 40), (200, 140)], fill=(0, 0, 0, 255), width=14)
    stroke.save(tmp_path / "layer.png")
    drawing = {"background": None, "layers": [handle_file(str(tmp_path / "layer.png"))],
               "composite": handle_file(str(tmp_path / "layer.png"))}
    shown, student, _, message, note = client.predict(finished_run["run_id"], drawing,
                                                      api_name="/classify_drawing")
    picture = Image.open(shown)
    assert picture.size[0] == picture.size[1] < 140  # cropped around the stroke, square
    expected = drawing_to_image([stroke], dark_background=True)  # digits are light on dark
    assert (np.asarray(picture.convert("L")) == np.asarray(expected)).all()
    again, _, _ = client.predict(finished_run["run_id"], handle_file(shown), api_name="/predict")
    assert student == again  # the answer is the one for the picture shown
    assert f"The student says **{student['label']}**" in message and note == ""

    empty = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    empty.save(tmp_path / "empty.png")
    *_, message, _ = client.predict(finished_run["run_id"], {"background": None, "layers": [
        handle_file(str(tmp_path / "empty.png"))], "composite": handle_file(str(tmp_path / "empty.png"))},
        api_name="/classify_drawing")
    assert "draw something on the sketchpad first" in message


def test_bad_input_shows_a_message_and_the_app_goes_on(client, finished_run, demo_zoo, tmp_path):
    *_, message = client.predict("no-such-org/no-such-model", api_name="/add_teacher")
    assert message.startswith("**Error:**") and "'no-such-org/no-such-model'" in message
    *_, message = client.predict("not a source!", api_name="/add_teacher")
    assert "unknown teacher source 'not a source!'" in message
    nameless = tmp_path / "nameless-teacher"
    shutil.copytree(demo_zoo[0], nameless)
    config = json.loads((nameless / "config.json").read_text())
    del config["label_names"]
    (nameless / "config.json").write_text(json.dumps(config))
    *_, message = client.predict(str(nameless), api_name="/add_teacher")
    assert "has no class names in its files" in message

    zip_run = (ZIP_UPLOAD, "", None, *DIGITS_RUN[3:])
    _, message, *_ = client.predict(*zip_run, api_name="/start_run")
    assert "choose a zip file of an image folder" in message
    (tmp_path / "empty.zip").write_bytes(b"")
    _, message, *_ = client.predict(ZIP_UPLOAD, "", handle_file(str(tmp_path / "empty.zip")), *DIGITS_RUN[3:],
                                    api_name="/start_run")
    assert "empty.zip is not a zip archive" in message
    with zipfile.ZipFile(tmp_path / "no-images.zip", "w") as archive:
        archive.writestr("cats/notes.txt", "not an image")
    _, message, *_ = client.predict(ZIP_UPLOAD, "", handle_file(str(tmp_path / "no-images.zip")), *DIGITS_RUN[3:],
                                    api_name="/start_run")
    assert "holds images of 0 class folder(s)" in message
    (tmp_path / "notes.txt").write_text("not a zip")
    with pytest.raises(AppError, match="Invalid file type"):  # Gradio refuses it before the app sees it
        client.predict(ZIP_UPLOAD, "", handle_file(str(tmp_path / "notes.txt")), *DIGITS_RUN[3:],
                       api_name="/start_run")
    _, message, _, options, *_ = client.predict(*DIGITS_RUN[:4], '{"temprature": 2}', *DIGITS_RUN[5:],
                                                api_name="/start_run")
    assert "fix the fields marked below" in message and "has no option(s) ['temprature']" in options

    student, _, message = client.predict(finished_run["run_id"], None, api_name="/predict")
    assert "upload an image" in message and not student.get("label")
    image, _ = sample_image("digits", index=0)
    image.save(tmp_path / "digit.png")
    *_, message = client.predict("../../etc", handle_file(str(tmp_path / "digit.png")), api_name="/predict")
    assert "'../../etc' is not a run of this app" in message
    student, _, _ = client.predict(finished_run["run_id"], handle_file(str(tmp_path / "digit.png")),
                                   api_name="/predict")
    assert student["label"] in DIGITS  # still serving


def test_publish_errors_show_in_the_page_without_the_token(client, finished_run, capfd):
    message = client.predict(finished_run["run_id"], "org/student", "", False, True, api_name="/publish")
    assert "enter a Hugging Face token" in message
    message = client.predict(finished_run["run_id"], "not a repo id", TOKEN, False, True, api_name="/publish")
    assert "malformed Hub repo id 'not a repo id'" in message
    message = client.predict(finished_run["run_id"], "org/student", TOKEN, False, True, api_name="/publish")
    assert "pushing the model org/student failed" in message  # this process is offline (HF_HUB_OFFLINE=1)
    assert "set to work offline (HF_HUB_OFFLINE=1)" in message  # said for people: no class name, no library hint
    assert "OfflineModeIsEnabled" not in message and "environment variable" not in message
    captured = capfd.readouterr()
    assert TOKEN not in message + captured.out + captured.err


def test_restarted_app_lists_past_runs_and_publishes_to_the_hub(finished_run, runs_dir, tmp_path):
    port = free_port()
    launch = ("import logging, runpy, sys; logging.basicConfig(level=logging.DEBUG); "
              f"sys.argv = ['app.py', '--runs-dir', {str(runs_dir)!r}]; "
              "runpy.run_path('app.py', run_name='__main__')")  # DEBUG logging: any log of the token would show
    with LocalHub(tmp_path / "hub") as hub, open(tmp_path / "app.log", "w+") as log:
        env = client_env(hub.endpoint, tmp_path / "hf-home") | {"GRADIO_SERVER_PORT": str(port)}  # as Spaces set it
        process = subprocess.Popen([sys.executable, "-c", launch], cwd=REPO_ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, env=env)
        try:
            url = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, "python app.py did not start"
                time.sleep(0.5)
            restarted = Client(url, verbose=False)
            choices = restarted.predict(None, api_name="/list_runs")["choices"]
            labels = {value: label for label, value in choices}
            assert re.search(r" · student 0\.\d{3}$", labels[finished_run["run_id"]])
            message = restarted.predict(finished_run["run_id"], "org/digits-student", TOKEN, False, True,
                                        api_name="/publish")
            again = restarted.predict(finished_run["run_id"], "org/digits-student", TOKEN, False, True,
                                      api_name="/publish")  # republished unchanged: the page says so
        finally:
            process.terminate()
            process.wait(timeout=30)
        log.seek(0)
        output = log.read()
    assert f"[{hub.endpoint}/org/digits-student]" in message
    assert f"[{hub.endpoint}/spaces/org/digits-student-demo]" in message
    assert "(new commit " in message and "(updated)" in message
    assert "nothing changed: the Hub already had these files" in again and "(nothing changed)" in again
    assert (tmp_path / "hub" / "repos" / "models" / "org" / "digits-student").is_dir()
    assert TOKEN not in output


# ---- the app's logic, directly


def test_curves_mark_every_epoch_on_whole_epoch_ticks_with_loss_terms_and_the_teachers_references():
    from amalgam.app.views import accuracy_figure, loss_figure

    history = [{"epoch": e, "loss": 1.0 / e, "soft": 0.6 / e, "hard": 0.4 / e, "loss_terms": ["hard", "soft"],
                "test_accuracy": 0.5 + 0.1 * e} for e in (1, 2)]
    loss = loss_figure(history[:1]).axes[0]  # a one-epoch run: a point, not an invisible line
    assert [line.get_label() for line in loss.get_lines()] == ["total", "hard", "soft"]
    assert all(line.get_marker() not in (None, "", "None") for line in loss.get_lines())
    axes = accuracy_figure(history, {"ensemble": {"accuracy": 0.8}, "oracle": {"accuracy": 0.9}}).axes[0]
    ticks = [t for t in axes.get_xticks() if 1 <= t <= 2]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks  # never 1.2 or 1.4 epochs
    assert axes.get_xlabel() == "epoch" and axes.get_ylabel() == "test accuracy"
    references = {line.get_label(): line.get_ydata()[0] for line in axes.get_lines()[1:]}
    assert references == {"teachers together (mean) 0.800": 0.8, "teacher oracle 0.900": 0.9}


def test_run_listing_reads_the_run_folders(finished_run, runs_dir, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(runs_dir / finished_run["run_id"], runs / "finished")
    unfinished = runs / "unfinished"
    unfinished.mkdir()
    description = json.loads((runs / "finished" / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**description, "created": "2999-01-01T00:00:00+00:00"}))
    (runs / "damaged").mkdir()
    (runs / "damaged" / "run.json").write_text("{not json")
    (runs / "not-a-run").mkdir()

    summaries = list_runs(runs)
    assert [s.run_id for s in summaries] == ["unfinished", "finished"]  # newest first; damaged one skipped
    assert summaries[0].accuracy is None and summaries[0].label.endswith("unfinished")
    metrics = json.loads((runs / "finished" / "metrics.json").read_text())
    assert summaries[1].accuracy == metrics["student"]["accuracy"]
    assert summaries[1].teachers == ("cnn-digits-0to4", "vit-digits-5to9")
    assert (summaries[1].method, summaries[1].data) == ("soft-targets", "digits")


def test_run_manager_queues_beyond_its_limit_and_cancels(demo_zoo, tmp_path):
    manager = RunManager(tmp_path / "runs", max_concurrent=1)
    teachers = tuple(str(folder) for folder in demo_zoo)
    try:
        long_run = manager.submit(RunRequest(teachers, "digits", epochs=200))
        waiting = manager.submit(RunRequest(teachers, "digits", epochs=1))
        deadline = time.monotonic() + 120
        while not long_run.history:  # cancel once training is under way
            assert time.monotonic() < deadline and not long_run.done, long_run.describe()
            time.sleep(0.1)
        assert waiting.status == QUEUED  # one run at a time
        assert manager.cancel(waiting.run_id) and manager.cancel(long_run.run_id)
        assert long_run.ended.wait(60) and waiting.ended.wait(60)
    finally:
        manager.shutdown()
    assert long_run.status == CANCELLED and "training was cancelled in epoch" in long_run.message
    assert len(long_run.history) < 200
    assert (long_run.run_dir / "run.json").is_file() and not (long_run.run_dir / "metrics.json").exists()
    assert waiting.status == CANCELLED and "before it started" in waiting.message
    assert not waiting.run_dir.exists()
    assert not manager.cancel(long_run.run_id)  # over already
    assert [s.run_id for s in list_runs(tmp_path / "runs")] == [long_run.run_id]
    assert list_runs(tmp_path / "runs")[0].accuracy is None
    assert list_runs(tmp_path / "runs")[0].label.endswith(" · cancelled")


def test_a_failed_run_is_still_listed_with_its_reason_after_a_restart(demo_zoo, tmp_path):
    manager = RunManager(tmp_path / "runs")
    teachers = tuple(str(folder) for folder in demo_zoo)
    try:  # the data is only opened in the background, after the request was accepted
        failed = manager.submit(RunRequest(teachers, str(tmp_path / "no-such-folder"), epochs=1))
        assert failed.ended.wait(120)
    finally:
        manager.shutdown()
    assert failed.status == "failed"
    [summary] = list_runs(tmp_path / "runs")  # what a restarted app reads: the folder alone
    assert summary.run_id == failed.run_id and summary.accuracy is None
    assert summary.label.endswith(" · failed") and summary.outcome == f"failed: {failed.message}"
    assert summary.teachers == teachers and summary.method == "soft-targets"


def test_run_request_is_checked_before_it_is_queued():
    def problems(**fields) -> dict[str, str]:
        return RunRequest(("zoo/a",), "digits", **fields).problems()

    assert problems() == {}
    assert "no option" in problems(method_options={"temprature": 1})["method_options"]
    assert "unknown method" in problems(method="no-such-method")["method_options"]
    assert "labeled fraction" in problems(labeled_fraction=1.5)["labeled_fraction"]
    assert "unknown augmentation 'rotate'" in problems(augment="crop,rotate")["augment"]
    assert "timm has no such model" in problems(student="resnet9000")["student"]
    # number boxes left empty arrive as None: each is named, none is a TypeError
    assert problems(epochs=None, lr=None, labeled_fraction=None).keys() == {"epochs", "lr", "labeled_fraction"}
    with pytest.raises(RequestError, match="epochs: enter a whole number of at least 1, got 2.5"):
        RunRequest(("zoo/a",), "digits", epochs=2.5).check()


def test_a_method_that_fits_itself_on_labels_is_refused_without_labels_before_it_runs(demo_zoo, tmp_path):
    from amalgam.teachers import load_teacher

    teachers = [load_teacher(folder) for folder in demo_zoo]
    request = RunRequest(tuple(map(str, demo_zoo)), "digits", method="trust-learner", labeled_fraction=0.0)
    assert "trust-learner fits part of itself on labels" in request.problems(teachers)["labeled_fraction"]
    assert RunRequest(request.teachers, "digits", method="soft-targets").problems(teachers) == {}
    manager = RunManager(tmp_path / "runs")
    with pytest.raises(RequestError, match="give it a labeled fraction above 0"):
        manager.submit(request)
    manager.shutdown()
    assert not (tmp_path / "runs").exists()  # no run was made


def test_the_setup_tab_names_each_bad_field_beside_it_and_starts_nothing(client, finished_run, runs_dir):
    before = set(runs_dir.iterdir()) if runs_dir.exists() else set()
    bad = (*DIGITS_RUN[:3], "trust-learner", "{}", 0.0, None, 0.01, "resnet9000", *DIGITS_RUN[9:])
    picker, message, teachers, options, budget, training, augment = client.predict(*bad, api_name="/start_run")
    assert "fix the fields marked below" in message
    assert "timm has no such model" in training and "epochs: enter a whole number" in budget
    assert teachers == options == augment == ""
    assert (set(runs_dir.iterdir()) if runs_dir.exists() else set()) == before
    relabeled = (*bad[:6], 2, *bad[7:8], "test_efficientnet", *bad[9:])
    _, message, _, _, budget, training, _ = client.predict(*relabeled, api_name="/start_run")
    assert "trust-learner fits part of itself on labels" in budget and training == ""


def test_the_augmentation_chosen_in_the_page_reaches_the_run(client, finished_run, runs_dir):
    picker, *_ = client.predict(*DIGITS_RUN[:6], 200, *DIGITS_RUN[7:10], ["flip", "crop"], api_name="/start_run")
    run_json = runs_dir / picker["value"] / "run.json"
    deadline = time.monotonic() + 120
    while not run_json.exists():  # written before training starts
        assert time.monotonic() < deadline
        time.sleep(0.2)
    client.predict(picker["value"], api_name="/cancel_run")
    assert json.loads(run_json.read_text())["train"]["augment"] == "crop,flip"


def test_zip_of_an_image_folder_is_unpacked_safely(tmp_path):
    data = load_data("digits")
    archive = tmp_path / "digits.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for index in range(12):
            image, label = data.test[index]
            path = tmp_path / "image.png"
            batch_to_image(image).save(path)
            zipped.write(path, f"digits/{data.class_names[label]}/{index}.png")
        zipped.writestr("digits/README.txt", "ignored: not an image")
    folder = extract_image_zip(archive, tmp_path / "uploads")
    assert sorted(p.name for p in folder.iterdir()) == sorted({data.class_names[data.test[i][1]] for i in range(12)})
    assert extract_image_zip(archive, tmp_path / "uploads") == folder  # the same upload is not unpacked twice

    with zipfile.ZipFile(tmp_path / "escape.zip", "w") as zipped:
        zipped.writestr("../0/a.png", b"x")
        zipped.writestr("../1/b.png", b"x")
    with pytest.raises(DataError, match="not inside a class folder"):
        extract_image_zip(tmp_path / "escape.zip", tmp_path / "uploads")
    assert not (tmp_path / "0").exists()


def test_an_image_becomes_the_raw_batch_the_run_trained_on():
    data = load_data("digits")
    image, _ = data.test[3]
    batch = image_to_batch(batch_to_image(image), channels=1, max_side=32)
    assert batch.dtype == torch.float32 and batch.shape == (1, 1, 8, 8)
    assert torch.equal(batch[0], image)  # uint8 data survives the round trip through a PNG-able image exactly
    rgb = image_to_batch(batch_to_image(torch.rand(3, 100, 50)), channels=3, max_side=40)
    assert rgb.shape == (1, 3, 40, 20) and 0.0 <= rgb.min() and rgb.max() <= 1.0


def test_app_py_serves_where_gradios_variables_say_unless_a_flag_says_otherwise(monkeypatch, capsys):
    import runpy

    parse_args = runpy.run_path(str(REPO_ROOT / "app.py"))["parse_args"]
    assert (parse_args([]).host, parse_args([]).port) == ("127.0.0.1", 7860)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    assert (parse_args([]).host, parse_args([]).port) == ("0.0.0.0", 7999)
    assert (parse_args(["--host", "127.0.0.1", "--port", "8001"]).host, parse_args(["--port", "8001"]).port) == (
        "127.0.0.1", 8001)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "http")
    with pytest.raises(SystemExit):
        parse_args([])
    assert "a port is a number from 1 to 65535 (GRADIO_SERVER_PORT or --port), got 'http'" in capsys.readouterr().err
