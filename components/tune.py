"""Stage 4, hyperparameter search with keras-tuner for one backbone.

Searched (``tune.space`` in the config): dense head sizes (one or two layers, e.g. 1024 then
128), dropout, optimizer (Adam, AdamW, SGD, Lion), peak learning rate and schedule (constant
or cosine), label smoothing, and, for pretrained backbones, how many top backbone layers to
unfreeze.
Algorithms: Hyperband (default; its brackets are capped at ``tune.max_trials`` trials),
Bayesian optimisation or random search.

The tuner folder (``tune.directory``; default: a stable folder beside ``out_dir``, or in
the task's checkpoint store under ``train.checkpoint_dir``, mirrored to gs:// after every
trial) may be gs://, since keras-tuner writes through tf.io.gfile; a re-run with the same
folder continues the search instead of starting again.

Distributed tuning works as keras-tuner's own: start the same command once with
``KERASTUNER_TUNER_ID=chief`` (runs the oracle) and on each worker with
``KERASTUNER_TUNER_ID=tuner0``, ``tuner1`` ..., all with ``KERASTUNER_ORACLE_IP`` and
``KERASTUNER_ORACLE_PORT`` naming the chief. Workers run trials; only the chief publishes
hparams.json, metrics.json, the trial table and the report.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from typing import Any

from hemaflow import storage
from hemaflow.config import Config
from hemaflow.errors import StageError

log = logging.getLogger("hemaflow.tune")

"""The file of a tune output folder that train reads."""


def hparams_from_values(values: dict[str, Any], pretrained: bool, config: Config) -> dict:
    """A tuner trial's values as the :class:`hemaflow.modeling.fitting.Hparams` fields."""
    from hemaflow.modeling import fitting

    base = fitting.default_hparams(config)
    dense = [int(values["dense_1"])] + ([int(values["dense_2"])] if values.get("dense_2") else [])
    lr = float(values["learning_rate"])
    return {
        "dense": dense,
        "dropout": float(values["dropout"]),
        "optimizer": str(values["optimizer"]),
        "learning_rate": lr,
        # Fine-tuning after a warm-up runs an order of magnitude lower, as the trial did.
        "fine_tune_learning_rate": lr / 10 if pretrained else lr,
        "schedule": str(values["schedule"]),
        "weight_decay": base.weight_decay,
        "label_smoothing": float(values["label_smoothing"]),
        "unfreeze": int(values["unfreeze"]) if pretrained else base.unfreeze,
    }


def trial_epochs(config: Config) -> int:
    """The longest a trial trains: tune.epochs (Hyperband needs at least 2 to halve)."""
    return (
        max(config.tune.epochs, 2) if config.tune.algorithm == "hyperband" else config.tune.epochs
    )


def _float(hp, name: str, bounds: list[float], **kwargs):
    """A float in [low, high], or a fixed value when the range is one point."""
    low, high = bounds
    return hp.Fixed(name, low) if low == high else hp.Float(name, low, high, **kwargs)


def make_hypermodel(s, config: Config):
    """A keras-tuner HyperModel over the search space above for the stage setup ``s``."""
    import dataclasses

    import keras_tuner as kt

    from hemaflow.modeling import fitting, zoo

    space = config.tune.space

    class BloodCellHyperModel(kt.HyperModel):
        def build(self, hp):
            hp.Choice("dense_1", space.dense_first)
            hp.Choice("dense_2", space.dense_second)
            _float(hp, "dropout", space.dropout)
            hp.Choice("optimizer", space.optimizers)
            _float(hp, "learning_rate", space.learning_rate, sampling="log")
            hp.Choice("schedule", space.schedules)
            hp.Choice("label_smoothing", space.label_smoothing)
            hp.Choice("unfreeze", space.unfreeze if s.pretrained else [-1])
            values = hparams_from_values(hp.values, s.pretrained, config)
            params = dataclasses.replace(fitting.default_hparams(config), **values)
            model = fitting.build(s, config, params)
            zoo.set_trainable_layers(
                model, params.unfreeze if s.pretrained else -1, freeze_batchnorm=s.pretrained
            )
            total = fitting.steps_per_epoch(s.train_images, s.batch_size) * trial_epochs(config)
            optimizer = fitting.make_optimizer(
                params.optimizer,
                params.learning_rate,
                params.schedule,
                total,
                params.weight_decay,
            )
            fitting.compile_model(model, optimizer, params.label_smoothing, s.jit_compile)
            return model

    return BloodCellHyperModel()


#: The tuner's state folder (oracle and trials) inside the task's checkpoint store.
TUNER_PART = "tuner"


def _tuner_store(out_dir: str, config: Config):
    """The checkpoint store holding the tuner's state, when ``train.checkpoint_dir`` is set.

    Not with an explicit ``tune.directory`` (its owner keeps it) nor for distributed
    tuning, whose workers share the chief's output and must not write its state.
    """
    from hemaflow.modeling import fitting

    ckpt = config.train.checkpoint_dir
    if not ckpt or config.tune.directory or os.environ.get("KERASTUNER_ORACLE_IP"):
        return None
    return fitting.checkpoint_store(out_dir, ckpt)


def _save_after_each_trial(tuner, store) -> None:
    """Mirror the tuner's folder once each trial is recorded, so a retried task goes on."""
    end_trial = tuner.on_trial_end

    def on_trial_end(trial) -> None:
        end_trial(trial)  # the oracle and the trial are written to the folder here
        store.save(TUNER_PART)

    tuner.on_trial_end = on_trial_end


def _labelled(tuner_class):
    """``tuner_class`` whose trials say "trial i/n" in the log and in their progress lines."""
    from hemaflow.modeling.callbacks import FitProgress

    class Tuner(tuner_class):
        def run_trial(self, trial, *args, **kwargs):
            total = self.oracle.max_trials
            label = f"trial {int(trial.trial_id) + 1}" + (f"/{total}" if total else "")
            log.info("%s: %s", label, trial.hyperparameters.values)
            for callback in kwargs.get("callbacks", []):
                if isinstance(callback, FitProgress):
                    callback.label = label  # each trial fits with copies of these
            return super().run_trial(trial, *args, **kwargs)

    return Tuner


def make_tuner(hypermodel, s, config: Config, directory: str, project: str):
    import keras_tuner as kt

    t = config.tune
    common = dict(
        objective=kt.Objective("val_accuracy", direction="max"),
        executions_per_trial=t.executions_per_trial,
        seed=config.seed,
        directory=directory,
        project_name=project,
        overwrite=False,
        distribution_strategy=s.strategy if s.strategy.num_replicas_in_sync > 1 else None,
    )
    if t.algorithm == "hyperband":
        tuner = _labelled(kt.Hyperband)(
            hypermodel, max_epochs=trial_epochs(config), factor=3, **common
        )
        # Hyperband sizes its brackets from max_epochs; the oracle's cap keeps the budget.
        tuner.oracle.max_trials = t.max_trials
        return tuner
    if t.algorithm == "bayesian":
        return _labelled(kt.BayesianOptimization)(hypermodel, max_trials=t.max_trials, **common)
    return _labelled(kt.RandomSearch)(hypermodel, max_trials=t.max_trials, **common)


def trial_rows(oracle) -> list[dict[str, Any]]:
    """One row per trial: id, status, score and every hyperparameter value."""
    rows = []
    for trial in sorted(oracle.trials.values(), key=lambda tr: tr.trial_id):
        row = {"trial_id": trial.trial_id, "status": str(trial.status), "score": trial.score}
        row.update({k: v for k, v in trial.hyperparameters.values.items()})
        rows.append(row)
    return rows


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def run(data_dir: str, backbone: str, out_dir: str, config: Config) -> dict:
    """Search hyperparameters for ``backbone``; out_dir gets hparams.json and the trial table.

    hparams.json holds the best hyperparameters (under ``hparams``) with the search's
    metrics beside them, so the file train reads says where it came from. A distributed
    worker only runs trials and returns its tuner id; the chief publishes the folder.
    """
    from hemaflow.modeling import fitting
    from hemaflow.modeling.callbacks import FitProgress
    from hemaflow.reporting.report import Report

    storage.check_output(out_dir, inputs=[data_dir])
    if config.tune.max_trials < 1:
        raise StageError("tune.max_trials: the tuner budget must be at least 1 trial")
    s = fitting.setup(data_dir, backbone, config, config.tune.train_images)
    train_ds, val_ds, _ = fitting.data(s, config.seed)
    store = _tuner_store(out_dir, config)
    if store is not None:
        store.restore(TUNER_PART)
    work = store.local if store is not None else fitting.default_work_dir(out_dir)
    directory = config.tune.directory or str(work / TUNER_PART)
    tuner = make_tuner(make_hypermodel(s, config), s, config, directory, backbone)
    if store is not None:
        _save_after_each_trial(tuner, store)
    # One TensorBoard run per trial (LOGS/TRIAL/execution0), kept while the search continues.
    logs = fitting.default_work_dir(out_dir) / fitting.TENSORBOARD_DIR
    callbacks = [FitProgress(s.train_images), fitting.tensorboard(s, logs, config.seed, val_ds)]
    tuner.search(
        train_ds, validation_data=val_ds, epochs=config.tune.epochs, callbacks=callbacks, verbose=0
    )

    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "chief")
    if os.environ.get("KERASTUNER_ORACLE_IP") and tuner_id != "chief":
        log.info("tuner worker %s finished its trials", tuner_id)
        return {"backbone": backbone, "tuner_id": tuner_id}

    rows = trial_rows(tuner.oracle)
    if not any(r["score"] is not None for r in rows):
        raise StageError(f"{backbone}: no tuning trial finished (see {directory})")
    best_trial = tuner.oracle.get_best_trials(1)[0]
    hparams = hparams_from_values(best_trial.hyperparameters.values, s.pretrained, config)
    metrics = {
        "backbone": backbone,
        "objective": "val_accuracy",
        "best_val_accuracy": float(best_trial.score),
        "best_trial": best_trial.trial_id,
        "trials": len(rows),
        "algorithm": config.tune.algorithm,
    }
    with storage.artifact_dir(out_dir) as staging:
        storage.write_text_atomic(
            staging / fitting.HPARAMS_FILE, json.dumps({**metrics, "hparams": hparams}, indent=2)
        )
        storage.write_text_atomic(staging / "metrics.json", json.dumps(metrics, indent=2))
        storage.write_text_atomic(staging / "trials.json", json.dumps(rows, indent=2, default=str))
        storage.write_text_atomic(staging / "trials.csv", rows_to_csv(rows))
        report = Report(f"Tuning: {backbone}")
        report.paragraph(
            f"{len(rows)} trial(s), {config.tune.algorithm}; best val accuracy "
            f"{best_trial.score:.4f} (trial {best_trial.trial_id}). The objective is val "
            "accuracy; the test split and Bmk are not used here."
        )
        report.json_block(hparams)
        report.table(rows)
        report.write(staging)
        fitting.publish_tensorboard(logs, staging)
    if store is not None:
        store.remove()
    log.info("%s: best val accuracy %.4f over %d trial(s)", backbone, best_trial.score, len(rows))
    return metrics
