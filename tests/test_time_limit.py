"""Training to a time limit: the deadline callback, the budgeted DAG, the CLI, ensemble, page."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from hemaflow.pipeline.cli import main

from hemaflow.config import load_config
from tests.helpers import tiny_cnn


class _Model:
    stop_training = False


def _callback(clock_values: list[float], deadline: float, epochs: int = 10):
    from hemaflow.modeling.callbacks import Deadline

    values = iter(clock_values)
    callback = Deadline(deadline, clock=lambda: next(values))
    callback.set_model(_Model())
    callback.set_params({"epochs": epochs})
    return callback


def test_deadline_does_not_start_an_epoch_that_would_overrun():
    # Epoch 0 runs 0-30 s; at 30 s another 30 s epoch would end at 60 > 50: stop there.
    cb = _callback([0.0, 0.0, 10.0, 30.0], deadline=50.0)
    cb.on_train_begin()
    cb.on_epoch_begin(0)
    cb.on_train_batch_end(0)
    cb.on_epoch_end(0)
    assert cb.stopped and cb.model.stop_training
    assert (cb.completed_epochs, cb.cut_epochs) == (1, 0)


def test_deadline_cuts_an_epoch_that_runs_over_and_does_not_count_it():
    cb = _callback([0.0, 0.0, 5.0, 12.0, 13.0], deadline=10.0)
    cb.on_train_begin()
    cb.on_epoch_begin(0)
    cb.on_train_batch_end(0)
    assert not cb.stopped
    cb.on_train_batch_end(1)
    assert cb.stopped and cb.model.stop_training
    cb.on_epoch_end(0)
    assert (cb.completed_epochs, cb.cut_epochs) == (0, 1)


def test_a_fit_with_a_deadline_two_seconds_away_stops_early_and_keeps_the_best_weights(tmp_path):
    import tensorflow as tf

    from hemaflow.modeling import fitting
    from hemaflow.modeling.callbacks import Deadline

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
    labels = np.eye(8, dtype=np.float32)[rng.integers(0, 8, 96)]
    train_ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    val_ds = tf.data.Dataset.from_tensor_slices((images[:32], labels[:32])).batch(16)
    model = tiny_cnn()
    fitting.compile_model(model, fitting.make_optimizer("adam", 3e-3, "constant", 0))
    deadline = Deadline(time.time() + 2.0)
    start = time.time()
    phase = fitting.run_phase(
        model, "p", tmp_path, train_ds, val_ds, 10_000, 96, extra_callbacks=[deadline]
    )
    took = time.time() - start
    history = phase["history"]
    assert deadline.stopped and 1 <= len(history["loss"]) < 10_000
    assert took < 30, took
    # The weights the phase keeps are its best epoch's, not the last one's.
    best = max(history["val_accuracy"])
    assert fitting.evaluate_accuracy(model, val_ds) == pytest.approx(best, abs=1e-6)
    kept = [w.copy() for w in model.get_weights()]
    model.load_weights(tmp_path / "p" / "best.weights.h5")
    for a, b in zip(kept, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ensemble_leaves_out_members_that_finished_no_epoch(tmp_path):
    from hemaflow.components.ensemble import finished_members

    records = {
        "done": {"stopped_by_deadline": True, "completed_epochs": 2},
        "none": {"stopped_by_deadline": True, "completed_epochs": 0},
        "plain": {"epochs_run": 4},
    }
    for name, record in records.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(record))
    (tmp_path / "old").mkdir()  # a member without a record is kept
    dirs = [str(tmp_path / n) for n in ("done", "none", "plain", "old")]
    kept, left_out = finished_members(dirs)
    assert kept == [dirs[0], dirs[2], dirs[3]]
    assert [p for p, _ in left_out] == [dirs[1]] and "one epoch" in left_out[0][1]


def test_bad_time_limits_stop_the_cli_with_one_line(tmp_path, capsys):
    for text in ("soon", "0", "-5m"):
        assert main(["run", f"--time-limit={text}", "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("hemaflow run: error: --time-limit") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_a_budget_puts_a_plan_before_training_and_none_without(tmp_path):
    from hemaflow.pipeline import dag
    from kfp import compiler, dsl

    def tasks(config) -> dict:
        import yaml

        path = tmp_path / "p.yaml"
        compiler.Compiler().compile(dag.build_pipeline(config), str(path))
        ir = yaml.safe_load(path.read_text())
        found = {}
        for comp in ir["components"].values():
            found.update(comp.get("dag", {}).get("tasks", {}))
        return found

    def comparing(found: dict) -> dict | None:
        loop = next(
            t for t in found.values() if "backbones" in json.dumps(t.get("parameterIterator"))
        )
        return loop.get("iteratorPolicy")

    plain = tasks(load_config("quickstart"))
    assert "plan" not in plain and "train" in plain and "train-member" not in plain
    budgeted = tasks(load_config("quickstart", overrides={"budget.minutes": 30}))
    assert "plan" in budgeted and "train-member" in budgeted and "train" not in budgeted
    assert "tune" in budgeted["plan"]["dependentTasks"][0] or any(
        "for-loop" in d for d in budgeted["plan"]["dependentTasks"]
    )
    loops = [t for t in budgeted.values() if "parameterIterator" in t]
    members = [t for t in loops if "plan" in json.dumps(t["parameterIterator"])]
    assert members and members[0]["iteratorPolicy"]["parallelismLimit"] == 1
    # Compare times one candidate at a time too, as the plan scales the speed it measured;
    # unbudgeted, or with members on separate nodes, candidates run side by side.
    assert comparing(budgeted) == {"parallelismLimit": 1}
    assert comparing(plain) is None
    separate = {"budget.minutes": 30, "budget.parallel_members": True}
    assert comparing(tasks(load_config("quickstart", overrides=separate))) is None
    # A submitted or scheduled run's clock: the backend fills in the job's creation time.
    created = budgeted["plan"]["inputs"]["parameters"]["created"]["runtimeValue"]["constant"]
    assert created == dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER


def test_run_page_shows_the_plan_predicted_against_actual():
    from hemaflow.reporting import runpage

    plan = {
        "minutes": 10,
        "views": 2,
        "run_seconds": 420.0,
        "within_limit": True,
        "predicted": {"spent": 100.0, "total": 300.0, "train": 200.0, "ensemble": 40.0},
        "members": [
            {
                "index": 0,
                "backbone": "small_cnn",
                "seed": 7,
                "epochs": 5,
                "predicted_seconds": 95.0,
                "actual_epochs": 3,
                "actual_seconds": 80.0,
                "stopped_by_deadline": True,
            }
        ],
    }
    html = runpage.render(runpage.RunPage("run", "succeeded", [], plan=plan))
    assert "<h2>Plan</h2>" in html and "within the limit" in html
    assert "1 min 35 s" in html and "1 min 20 s" in html and "stopped it" in html
    assert "<h2>Plan</h2>" not in runpage.render(runpage.RunPage("run", "succeeded", []))


#: The quickstart DAG on less data and fewer trials, so the whole run fits in minutes here.
SMALL = [
    "data.synthetic_per_class=20",
    "augment.copies=0",
    "compare.epochs=1",
    "compare.train_images=64",
    "tune.max_trials=1",
    "tune.train_images=64",
    "evaluate.max_images=32",
    "evaluate.corruptions=[gaussian_noise]",
    "evaluate.severities=[3]",
]


@pytest.mark.slow
def test_run_to_a_time_limit_trains_the_planned_members_in_time(tmp_path, capsys):
    out = tmp_path / "out"
    limit_minutes = 6
    start = time.time()
    args = ["run", "--profile", "quickstart", "--time-limit", f"{limit_minutes}m", "--no-cache"]
    args += ["--out", str(out)]
    for override in SMALL:
        args += ["--set", override]
    assert main(args) == 0
    took = time.time() - start
    assert took <= limit_minutes * 60, took
    plan = json.loads((out / "plan.json").read_text())
    assert plan["within_limit"] and plan["run_seconds"] <= limit_minutes * 60
    assert plan["members"], plan
    for member in plan["members"]:
        # Every planned member was trained, for at most its planned epochs.
        assert member["actual_seconds"] is not None, member
        assert 1 <= member["actual_epochs"] <= member["epochs"], member
    ensemble = [p for p in (out / "kfp").rglob("ensemble/model/metrics.json")]
    assert ensemble, "no ensemble output"
    counted = json.loads(ensemble[0].read_text())
    assert len(counted["members"]) + len(counted["left_out"]) == len(plan["members"])
    assert "<h2>Plan</h2>" in (out / "index.html").read_text()
    assert "time limit" in capsys.readouterr().out
    assert Path(out / "metrics.json").is_file()
