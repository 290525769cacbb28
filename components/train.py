"""Stage 5, final training of one backbone with its tuned hyperparameters.

Pretrained backbones: a frozen warm-up (``train.warmup_epochs``, only the head learns, so
the random head does not wreck the pretrained features), then fine-tuning of the top
``unfreeze`` backbone layers at the lower ``fine_tune_learning_rate``. From scratch: one
phase over the whole network at ``learning_rate``. Each phase checkpoints every epoch into a
stable work folder (under ``train.checkpoint_dir``, local or gs://, else beside ``out_dir``):
a re-run with the same ``out_dir`` after a kill or preemption resumes at the last finished
epoch.

Hyperparameters come from a tune output folder (its ``hparams.json``) or a JSON file; without
one, from the config's ``train.*`` and ``model.head``.

``train.consistency.kind: augmix_jsd`` trains both phases on [clean; two AugMix views]
batches with cross-entropy on the clean view plus ``weight`` x the Jensen-Shannon divergence
(:mod:`hemaflow.modeling.consistency`); the exported model is the plain classifier.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from hemaflow import storage
from hemaflow.config import Config
from hemaflow.reporting import plots

log = logging.getLogger("hemaflow.train")


def run(data_dir: str, backbone: str, hparams: str, out_dir: str, config: Config) -> dict:
    """Train, then export a Model folder to ``out_dir``; returns val (and Bmk-val) metrics.

    ``hparams`` is a tune output folder, a JSON file, or empty for the config's defaults.
    """
    from hemaflow.modeling import consistency, export, fitting, zoo
    from hemaflow.reporting.report import Report

    storage.check_output(out_dir, inputs=[data_dir, hparams])
    start = time.perf_counter()
    hp = fitting.load_hparams(hparams, config)
    s = fitting.setup(data_dir, backbone, config)
    store = fitting.checkpoint_store(out_dir, config.train.checkpoint_dir)
    work = store.local
    work.mkdir(parents=True, exist_ok=True)
    t = config.train
    train_ds, val_ds, bmk_val_ds = fitting.data(s, config.seed, t.consistency)
    with s.strategy.scope():
        model = fitting.build(s, config, hp)
        # What fit trains: the classifier, or a consistency trainer sharing its variables.
        fit_model = consistency.wrap(model, t.consistency)
    logs = work / fitting.TENSORBOARD_DIR  # kept with the checkpoints: a resumed run adds to it
    deadlines = _deadlines(config)  # one per phase; empty without a time-limited plan

    phases: list[dict[str, Any]] = []
    if s.pretrained and t.warmup_epochs:
        zoo.set_trainable_layers(model, 0)
        fitting.compile_phase(s, fit_model, hp, hp.learning_rate, t.warmup_epochs)
        phases.append(
            fitting.run_phase(
                fit_model,
                "warmup",
                work,
                train_ds,
                val_ds,
                t.warmup_epochs,
                s.train_images,
                tensorboard=fitting.tensorboard(s, logs / "warmup", config.seed),
                store=store,
                extra_callbacks=deadlines[:1],
            )
        )
    unfreeze = hp.unfreeze if s.pretrained else -1
    trainable = zoo.set_trainable_layers(model, unfreeze, freeze_batchnorm=s.pretrained)
    rate = hp.fine_tune_learning_rate if s.pretrained else hp.learning_rate
    fitting.compile_phase(s, fit_model, hp, rate, t.epochs)
    phases.append(
        fitting.run_phase(
            fit_model,
            "finetune",
            work,
            train_ds,
            val_ds,
            t.epochs,
            s.train_images,
            patience=t.early_stopping_patience,
            tensorboard=fitting.tensorboard(s, logs / "finetune", config.seed),
            store=store,
            extra_callbacks=deadlines[1:],
        )
    )

    names = ["warmup", "finetune"][-len(phases) :]
    history = _concat([p["history"] for p in phases])
    metrics = {
        "val_accuracy": fitting.evaluate_accuracy(model, val_ds),
        "bmk_val_accuracy": (
            fitting.evaluate_accuracy(model, bmk_val_ds) if bmk_val_ds is not None else None
        ),
        "epochs_run": len(history.get("loss", [])),
        # A time-limited plan's member: what it planned, what ran to the end, who stopped it.
        "planned_epochs": t.epochs + (t.warmup_epochs if len(phases) > 1 else 0),
        # Epochs a deadline cut short still validate (Keras): they do not count as run through.
        "completed_epochs": len(history.get("loss", [])) - sum(d.cut_epochs for d in deadlines),
        "stopped_by_deadline": any(d.stopped for d in deadlines),
        "seed": config.seed,
        "resumed_from": phases[-1].get("resumed_from", 0),
        "train_images_per_s": fitting.steady_rate(phases[-1].get("rates", [])),
        "trainable_backbone_layers": trainable,
        "wall_seconds": time.perf_counter() - start,
        # What ran, for a preflight to check: the phases, the optimizer (a
        # LossScaleOptimizer under mixed_float16) and any random-init fallback.
        "phases": names,
        **{
            f"{name}_epochs_run": len(p["history"].get("loss", []))
            for name, p in zip(names, phases, strict=True)
        },
        "optimizer": type(fit_model.optimizer).__name__,
        "loss_scale_optimizer": type(fit_model.optimizer).__name__ == "LossScaleOptimizer",
        # AugMix + JSD: the loss in the history is then CE + weight x jsd (both logged).
        "consistency": t.consistency.kind,
        "consistency_weight": t.consistency.weight if consistency.enabled(t.consistency) else 0.0,
        "weights_fallback": getattr(model, "weights_fallback_note", ""),
    }
    info = {
        "backbone": backbone,
        "precision": s.policy,
        "pretrained": s.pretrained,
        "weights": config.model.weights if s.pretrained else "none",
        "weights_fallback": metrics["weights_fallback"],
        "hparams": hp.__dict__,
        "metrics": metrics,
        "history": history,
        "profile": config.profile,
        "seed": config.seed,
    }
    with storage.artifact_dir(out_dir) as staging:
        export.export_model(model, staging, s.info.class_names, s.info.image_size, info)
        curves = plots.curves_png(history, f"{backbone} ({s.policy})")
        storage.write_text_atomic(staging / "metrics.json", json.dumps(metrics, indent=2))
        report = Report(f"Training: {backbone}")
        report.table([{"backbone": backbone, "precision": s.policy, **metrics}])
        report.paragraph(
            "val_accuracy: the val split, which also picks the best epoch and stops early; "
            "bmk_val_accuracy: val through the Bmk policy (empty without a bmk_val split). "
            "The test split and Bmk are not used here; evaluate reports on them."
        )
        if consistency.enabled(t.consistency):
            c = t.consistency
            report.paragraph(
                f"Consistency: {c.kind}, weight {c.weight:g} (AugMix severity {c.severity}, "
                f"width {c.width}, depth {c.depth}, alpha {c.alpha:g}). Each training image "
                "was seen clean and in two AugMix views in one forward pass; loss = "
                "cross-entropy on the clean view + weight x Jensen-Shannon divergence of the "
                "three predictions (jsd in the history). train_images_per_s counts clean "
                "images. Validation is on single clean views."
            )
        report.figure("curves.png", curves, "loss and accuracy per epoch (train and val)")
        report.json_block(info["hparams"])
        report.write(staging)
        fitting.publish_tensorboard(logs, staging)
    # The model is published; its checkpoints (local and mirrored) are no longer needed.
    store.remove()
    log.info(
        "%s: val accuracy %.4f in %.0f s",
        backbone,
        metrics["val_accuracy"],
        metrics["wall_seconds"],
    )
    return metrics


def _deadlines(config: Config) -> list:
    """Two :class:`~hemaflow.modeling.callbacks.Deadline` (warm-up, fine-tune) at the
    plan's ``budget.member_deadline``, or none without one."""
    if not config.budget.member_deadline:
        return []
    from hemaflow.modeling.callbacks import Deadline

    return [Deadline(config.budget.member_deadline) for _ in range(2)]


def _concat(histories: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Phase histories joined epoch after epoch (metric series only, no epoch column)."""
    out: dict[str, list[float]] = {}
    for history in histories:
        for key, values in history.items():
            if key != "epoch":
                out.setdefault(key, []).extend(values)
    return out
