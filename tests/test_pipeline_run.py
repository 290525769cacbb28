"""``hemaflow run``: the whole DAG through kfp.local's SubprocessRunner, on real stages.

The end-to-end runs are slow (every stage trains or scores); the checks of bad input and of
the local source handling are fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hemaflow.pipeline.cli import main
from hemaflow.pipeline.runners import local_source, resolve_source

from hemaflow.config import load_config


def check_outputs(out: Path) -> dict:
    """The --out folder holds a model that loads and predicts, sane metrics and a report."""
    from hemaflow.modeling.loading import load_model, read_model_manifest

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "bmk_accuracy", "corrupted_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert 0.0 <= metrics["ece"] <= 1.0
    manifest = read_model_manifest(str(out / "model"))
    assert manifest["kind"] == "model"
    assert len(manifest["class_names"]) == 8
    model = load_model(str(out / "model"))
    size = manifest["image_size"]
    images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    probs = np.asarray(model.predict(images, verbose=0))
    assert probs.shape == (3, 8)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    html = (out / "report.html").read_text()
    assert html.lstrip().lower().startswith(("<!doctype html", "<html"))
    assert "</html>" in html.lower() and len(html) > 1000
    return metrics


@pytest.mark.slow
def test_run_quickstart_on_generated_data(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), "--no-cache"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.html") in printed and str(out / "model") in printed
    metrics = check_outputs(out)
    # 8 separable synthetic classes: clearly above chance (0.125) even after 2 epochs.
    assert metrics["accuracy"] > 0.2
    assert (out / "kfp").is_dir()
    assert (out / "index.html").is_file() and str(out / "index.html") in printed
    assert (out / "logs" / "ingest.log").is_file() and (out / "tensorboard").is_dir()
    assert "executor_input" not in printed


@pytest.mark.slow
def test_run_on_a_small_real_sample(pbc_sample, tmp_path):
    out = tmp_path / "out"
    args = ["run", "--data", str(pbc_sample), "--out", str(out), "--set", "compare.top_k=1"]
    assert main(args) == 0
    metrics = check_outputs(out)
    assert metrics["accuracy"] > 1 / 8


def test_bad_input_stops_before_the_run(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "data source not found" in capsys.readouterr().err
    assert main(["run", "--set", "compare.top_k=3", "--out", str(out)]) == 1
    assert "cannot select the top 3 of 2" in capsys.readouterr().err
    assert main(["run", "--set", "model.backbones=[small_cnn, vgg99]", "--out", str(out)]) == 1
    assert "unknown backbone(s) 'vgg99'" in capsys.readouterr().err
    assert not out.exists()


def test_local_sources_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cells").mkdir()
    config = resolve_source(load_config(overrides={"data.source": "cells"}))
    assert config.data.source == str(tmp_path / "cells")
    assert local_source("default") is None
    assert local_source("bloodmnist:64") is None
    assert local_source("gs://bucket/cells") is None


# --------------------------------------------------------------------------- quiet runs


def test_kfp_output_records_are_parsed():
    from hemaflow.pipeline.runners import headline, parse_outputs

    message = (
        "Task 'compare' outputs:\n"
        "    Output: {'backbone': 'small_cnn', 'val_accuracy': 0.5}\n"
        "    metrics: Metrics( name='metrics',\n"
        "                      uri='/r/for-loop-1-iteration-0/compare/metrics',\n"
        "                      metadata={'val_accuracy': 0.5} )\n"
        "    result: Artifact( name='result',\n"
        "                      uri='/r/for-loop-1-iteration-0/compare/result',\n"
        "                      metadata={} )"
    )
    values, kinds = parse_outputs(message)
    assert values["Output"]["backbone"] == "small_cnn"
    assert values["result"] == "/r/for-loop-1-iteration-0/compare/result"
    assert kinds == {"metrics": "Metrics", "result": "Artifact"}
    assert headline("compare", values, {"val_accuracy": 0.5}) == "val_accuracy 0.500"
    assert headline("select-top-k", {"Output": ["a", "b"]}, {}) == "top a, b"
    assert headline("ingest", {}, {"train_images": 3, "val_images": 1, "test_images": 2}) == (
        "3/1/2 train/val/test images"
    )


def test_task_logs_route_each_thread_to_its_task(tmp_path):
    """Two fan-out iterations at once, as kfp.local runs them, land in two named logs."""
    import logging
    import threading

    from hemaflow.pipeline.runners import TaskLogs

    events: list[str] = []

    class Observer:
        def task_started(self, task):
            events.append(f"start {task.key}")

        def task_progress(self, task):
            events.append(f"progress {task.key} {task.progress}")

        def task_finished(self, task):
            events.append(f"done {task.key} {task.state}")

        def task_failed(self, task, tail):
            events.append(f"failed {task.key} {tail[-1]}")

    barrier = threading.Barrier(2)

    def task(backbone: str, ok: bool) -> None:
        logging.info("Executing task \x1b[96m'compare'\x1b[0m")
        barrier.wait()
        print("    [KFP Executor x INFO]: Got executor_input:")
        print(f'            "backbone": "{backbone}",')
        barrier.wait()
        print(f"    [KFP Executor x INFO]: epoch 1: accuracy=0.5 ({backbone})")
        status = "\x1b[92mSUCCESS\x1b[0m" if ok else "\x1b[91mFAILURE\x1b[0m"
        logging.info(f"Task \x1b[96m'compare'\x1b[0m finished with status {status}")
        if ok:
            logging.info("Task \x1b[96m'compare'\x1b[0m has no outputs")
        print("-" * 40)

    logs = TaskLogs(tmp_path / "logs", tmp_path / "cache", observer=Observer())
    with logs.capture():
        logging.getLogger().setLevel(logging.INFO)
        print("orchestration line")
        threads = [
            threading.Thread(target=task, args=("small_cnn", True)),
            threading.Thread(target=task, args=("resnet_mini", False)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    small = (tmp_path / "logs" / "compare-small_cnn.log").read_text()
    resnet = (tmp_path / "logs" / "compare-resnet_mini.log").read_text()
    assert "(small_cnn)" in small and "(resnet_mini)" not in small
    assert "(resnet_mini)" in resnet and "finished with status FAILURE" in resnet
    assert "\x1b[" not in small
    assert "orchestration line" in (tmp_path / "logs" / "run.log").read_text()
    assert "start compare-small_cnn" in events and "done compare-small_cnn succeeded" in events
    assert any(e.startswith("failed compare-resnet_mini epoch 1") for e in events)
    assert [t.state for t in logs.failed()] == ["failed"]


def test_run_page_lists_tasks_in_dag_order_with_fan_outs_grouped():
    from hemaflow.reporting import runpage

    tasks = [
        runpage.PageTask("ingest", "succeeded", seconds=2.0, report="reports/ingest.html"),
        runpage.PageTask("compare", "succeeded", backbone="a", seconds=75, log="logs/c-a.log"),
        runpage.PageTask("compare", "failed", backbone="<b>"),
        runpage.PageTask("select-top-k", "cached"),
    ]
    html = runpage.render(runpage.RunPage("run", "failed", tasks, metrics={"accuracy": 0.5}))
    assert [len(g) for g in runpage.task_groups(tasks)] == [1, 2, 1]
    assert html.count('class="fanout"') == 1 and "&lt;b&gt;" in html
    assert 'href="reports/ingest.html"' in html and "1 min 15 s" in html
    assert "<script" not in html and "0.500" in html
    card = "# Card\n\nSome **bold** `code`.\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    body = runpage.markdown_to_html(card)
    assert "<h1>Card</h1>" in body and "<strong>bold</strong>" in body
    assert "<li>two</li>" in body and "<th>a</th>" in body and "<td>2</td>" in body
