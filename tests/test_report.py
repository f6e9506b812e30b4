"""The run report (report.html), `tunefork visualize`, and the report rendered in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tiny

PNG = b"\x89PNG\r\n\x1a\n"


def _config(bert: Path, epochs: int = 3) -> dict:
    return {
        "input_features": [{"name": "review", "type": "text", "preprocessing": {"max_sequence_length": 32},
                            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(bert), "trainable": True}}],
        "output_features": [{"name": "sentiment", "type": "category"}, {"name": "score", "type": "number"}],
        "trainer": {"epochs": epochs, "batch_size": 16, "learning_rate": 1e-3},
    }


@pytest.fixture(scope="module")
def runs(tiny_bert, tmp_path_factory):
    """An experiment (train + test, files for ground truth) and a plain train run of the same task."""
    from tunefork import Model

    folder = tmp_path_factory.mktemp("report")
    frame = tiny.sentiment_frame(240, seed=1)
    frame.iloc[:160].to_csv(folder / "train.csv", index=False)
    frame.iloc[160:200].to_csv(folder / "validation.csv", index=False)
    frame.iloc[200:].to_csv(folder / "test.csv", index=False)
    result, _ = Model(_config(tiny_bert), progress=False, quiet=True).experiment(
        training_set=folder / "train.csv", validation_set=folder / "validation.csv", test_set=folder / "test.csv",
        output_directory=folder / "results")
    plain = Model(_config(tiny_bert, epochs=2), progress=False, quiet=True).train(
        frame.iloc[:200], output_directory=folder / "results", model_name="plain")
    return {"experiment": result.output_directory, "train": plain.output_directory, "folder": folder}


def _images(page: str) -> dict[str, tuple[str, bytes]]:
    """alt text → (kind, decoded bytes) of every embedded picture."""
    found = re.findall(r'<img alt="([^"]*)" src="data:image/(svg\+xml|png);base64,([^"]+)"', page)
    return {alt: (kind, base64.b64decode(data)) for alt, kind, data in found}


def _svg_texts(data: bytes) -> list[str]:
    return [t.text.strip() for t in ET.fromstring(data).iter() if t.tag.endswith("text") and t.text and t.text.strip()]


def test_every_run_writes_a_self_contained_report(runs):
    for run in (runs["train"], runs["experiment"]):
        page = (run / "report.html").read_text()
        for heading in ("Metrics", "Learning curves", "Confusion matrix / Predicted vs true", "Efficiency", "Configuration"):
            assert f"<h2>{heading}</h2>" in page
        assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)  # nothing to fetch
        images = _images(page)
        # loss + accuracy, loss + r2, combined loss; a confusion matrix and a scatter per shown split
        assert len(images) >= 7
        for kind, data in images.values():
            if kind == "png":
                assert data.startswith(PNG)
            else:
                assert ET.fromstring(data).tag.endswith("svg")


def test_the_report_shows_the_recorded_numbers(runs):
    run = runs["experiment"]
    page = (run / "report.html").read_text()
    test = json.loads((run / "test_statistics.json").read_text())
    stats = json.loads((run / "training_statistics.json").read_text())
    best = stats["best"]["evaluation"]
    header = re.search(r"<h2>Metrics</h2><table><thead><tr>(.*?)</tr>", page).group(1)
    assert re.findall(r">(\w+)</th>", header)[-3:] == ["training", "validation", "test"]
    row = re.search(r"<td class=\"\">sentiment</td><td class=\"\">accuracy</td>(.*?)</tr>", page).group(1)
    cells = re.findall(r">([-\d.,—]+)</td>", row)
    assert cells == [f"{stats['training']['sentiment']['accuracy'][best]:,.4f}",
                     f"{stats['validation']['sentiment']['accuracy'][best]:,.4f}", f"{test['sentiment']['accuracy']:,.4f}"]
    assert {"confusion matrix sentiment validation", "confusion matrix sentiment test", "predicted vs true score validation",
            "predicted vs true score test", "sentiment loss", "score r2"} <= set(_images(page))
    assert "experiment (train + test)" in page
    assert "experiment (train + test)" not in (runs["train"] / "report.html").read_text()


def test_the_test_confusion_matrix_is_the_evaluated_one(runs):
    """The report's test matrix shows test_statistics.json's counts, laid out row by row (true × predicted)."""
    run = runs["experiment"]
    matrix = json.loads((run / "test_statistics.json").read_text())["sentiment"]["confusion_matrix"]
    assert sum(map(sum, matrix)) == 40
    kind, svg = _images((run / "report.html").read_text())["confusion matrix sentiment test"]
    texts = _svg_texts(svg)
    assert kind == "svg+xml" and "sentiment · test (final model)" in texts
    vocab = json.loads((run / "model" / "training_set_metadata.json").read_text())["outputs"]["sentiment"]["vocab"]
    assert vocab[0] in texts and vocab[1] in texts
    counts = [t for t in texts if t.isdigit()]
    assert [int(c) for c in counts] == [c for row in matrix for c in row]


def test_roc_points_and_auc_agree_with_the_rank_statistic():
    from tunefork.features.metrics import roc_auc
    from tunefork.visualize import roc_points

    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    score = np.round(y * 0.6 + rng.random(300), 2)  # ties included
    fpr, tpr = roc_points(y, score)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == pytest.approx(1) and tpr[-1] == pytest.approx(1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # torchmetrics' binary_auroc (behind roc_auc) builds its ROC curve in float32: equal to ~1e-7, not to the last bit
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, score), abs=1e-6)


@pytest.mark.parametrize("visualization, expected", [
    ("learning_curves", ["learning_curves_sentiment_loss", "learning_curves_sentiment_accuracy", "learning_curves_score_r2",
                         "learning_curves_combined_loss"]),
    ("confusion_matrix", ["confusion_matrix_experiment_run_sentiment"]),
    ("compare_performance", ["compare_performance_sentiment", "compare_performance_score"]),
    ("roc_curves", ["roc_curves_sentiment"]),
])
def test_visualize_writes_each_picture_from_run_directories(runs, tmp_path, visualization, expected):
    from tunefork.cli import main

    runs_given = [runs["experiment"], runs["train"]] if visualization in ("learning_curves", "compare_performance") else [runs["experiment"]]
    args = ["visualize", "--visualization", visualization, "--run_directories", *map(str, runs_given),
            "--output_directory", str(tmp_path), "--file_format", "png"]
    if visualization == "roc_curves":
        args += ["--ground_truth", str(runs["folder"] / "test.csv"), "--positive_label", "positive"]
    assert main(args) == 0
    for name in expected:
        data = (tmp_path / f"{name}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 5000


def test_visualize_says_what_is_missing(runs, tmp_path, capsys):
    from tunefork.cli import main

    assert main(["visualize", "-v", "confusion_matrix", "-r", str(runs["train"]), "-od", str(tmp_path)]) == 2
    assert "test_statistics.json: not found" in capsys.readouterr().err
    assert main(["visualize", "-v", "roc_curves", "-r", str(runs["experiment"]), "-od", str(tmp_path)]) == 2
    assert "needs --ground_truth" in capsys.readouterr().err
    assert main(["visualize", "-v", "learning_curves", "-r", str(runs["train"]), "-ofn", "nope", "-od", str(tmp_path)]) == 2
    assert "output feature 'nope' not found" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (CI installs Debian's chromium package)")
def test_the_report_renders_in_headless_chromium_without_console_errors(runs, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    page = (runs["experiment"] / "report.html").resolve()
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
               f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    assert shot.is_file() and shot.stat().st_size > 50_000, done.stderr[-2000:]
    image = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert image.shape == (2400, 1280)
    assert image.std() > 10  # not a blank page: text, tables and charts make the pixels vary
    assert (image < 100).mean() > 0.002  # dark pixels: text and chart lines were drawn


def test_training_writes_its_report_without_matplotlib(tiny_bert, tmp_path):
    """matplotlib is only in the `viz` extra: a base install trains and writes report.html without it."""
    tiny.sentiment_frame(60, seed=3).to_csv(tmp_path / "data.csv", index=False)
    config = _config(tiny_bert, epochs=1)
    config["output_features"] = config["output_features"][:1]
    # a base install: no matplotlib to import, and no distribution metadata for it (what torchmetrics looks up)
    code = ("import importlib.metadata as md, sys\nsys.modules['matplotlib'] = None  # import matplotlib now fails\n"
            "real = md.version\n"
            "def version(name):\n"
            "    if name.lower() == 'matplotlib':\n"
            "        raise md.PackageNotFoundError(name)\n"
            "    return real(name)\n"
            "md.version = version\n"
            "from tunefork import Model\n"
            f"result = Model({config!r}, progress=False, quiet=True).train({str(tmp_path / 'data.csv')!r}, "
            f"output_directory={str(tmp_path / 'results')!r})\n"
            "print(result.output_directory)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    page = (Path(done.stdout.strip().splitlines()[-1]) / "report.html").read_text()
    assert {"sentiment loss", "sentiment accuracy", "confusion matrix sentiment validation"} <= set(_images(page))
