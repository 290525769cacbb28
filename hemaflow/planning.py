"""Turn a wall-clock budget into a training plan: members, epochs, test-time views, seconds.

Users think in budgets, not epochs. After compare (and tune) have run on this machine, the
plan step knows what a backbone costs here: compare measured its training and inference
images/s, its epoch seconds and the time around its epochs. :func:`make_plan` is a pure
function of those measurements, the dataset sizes and the time left: no clock, no file, so
the same inputs always give the same plan and every figure in it can be checked by hand.

Members train one after another where cores are shared (a local run: the training time is the
sum of theirs) or side by side on separate nodes (a cluster: the longest one). The plan first
gives one member the profile's full length (``train.epochs``), then adds members at that
length while they fit (up to ``budget.max_members``); a budget below one full-length member
trains one member for as many epochs as fit. Once ``budget.lengthen_at`` members (by default
``max_members``) are at full length, what is left lengthens every member, up to
``budget.max_epochs``, and only then adds members at that length up to ``max_members``: a fast
machine spends its budget instead of leaving it unused, on longer members first where a
profile has measured that they beat more short ones. More budget therefore never means fewer
members, nor fewer epochs at the same member count. Test-time views (each one more inference
pass in ensemble and evaluate) are the configured ones if they fit beside those members, else
fewer. A budget too short for one epoch of one member is refused (:class:`PlanError`) with the
minimum this machine needs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from hemaflow.errors import HemaflowError

#: Test-time view counts the ensemble supports, most first (see ``EnsembleConfig.views``).
VIEW_CHOICES: tuple[int, ...] = (8, 4, 2, 1)


class PlanError(HemaflowError, ValueError):
    """A time limit cannot be parsed, or is too short for one epoch of one member."""


# --------------------------------------------------------------------------- time limits

_DURATION = re.compile(
    r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?"
)


def deadline_overrides(minutes: float, now: float) -> dict[str, float]:
    """Config overrides that start a run's budget clock at ``now`` (epoch seconds).

    A local run starts its clock when it starts, so the plan sees what ingest, augment,
    compare and tune took; without a deadline the plan would count from its own start.
    """
    if not minutes:
        return {}
    return {"budget.minutes": minutes, "budget.deadline": now + minutes * 60}


def job_start(created: str) -> float | None:
    """Epoch seconds of a pipeline job's creation time (RFC 3339, as Vertex and Kubeflow fill
    ``dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER``); None where it is empty or was never
    filled in (kfp.local leaves the placeholder as it is).

    A submitted or scheduled run has no ``hemaflow run`` to start its clock: its budget then
    counts from the job's creation, so the plan sees what the stages before it took.
    """
    try:  # Python 3.11 reads RFC 3339 whole: "Z", nanoseconds (kept to microseconds)
        stamp = datetime.fromisoformat(str(created).strip())
    except ValueError:
        return None
    return stamp.timestamp() if stamp.tzinfo is not None else None  # no zone: not a stamp


def parse_time_limit(text: str) -> float:
    """Minutes in ``90s``, ``55m``, ``1h30m``, ``2h``, or plain minutes (``60``, ``7.5``).

    Zero, negative or unreadable limits raise a one-line :class:`PlanError`.
    """
    raw = str(text).strip().lower()
    hint = "expected e.g. 90s, 55m, 1h30m or plain minutes"
    if re.fullmatch(r"-?\d+(?:\.\d+)?", raw):
        minutes = float(raw)
    else:
        match = _DURATION.fullmatch(raw)
        if not raw or match is None or not any(match.groupdict().values()):
            raise PlanError(f"--time-limit {text!r}: not a duration; {hint}")
        parts = {k: float(v or 0) for k, v in match.groupdict().items()}
        minutes = parts["h"] * 60 + parts["m"] + parts["s"] / 60
    if not math.isfinite(minutes) or minutes <= 0:
        raise PlanError(f"--time-limit {text!r}: must be more than zero; {hint}")
    return minutes


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Measured:
    """What compare measured for one backbone on this machine (its metrics.json)."""

    backbone: str
    score: float  # compare's ranking criterion; higher is better
    train_images_per_s: float  # over whole epochs (training and validation)
    infer_images_per_s: float
    epoch_seconds: float  # a steady epoch of compare (training + validation)
    train_images: int  # compare's training images per epoch
    first_epoch_seconds: float = 0.0  # the first epoch (graph tracing, cache filling)
    overhead_seconds: float = 0.0  # compare's time outside its epochs: build, scoring, export

    @classmethod
    def from_result(cls, result: dict[str, Any], score: float) -> Measured:
        """From a compare result; older results without epoch seconds derive them from rates."""
        images = int(result.get("train_images") or 0)
        rate = float(result.get("train_images_per_s") or 0.0)
        epoch = float(result.get("epoch_seconds") or (images / rate if rate and images else 0.0))
        if rate <= 0 or epoch <= 0 or float(result.get("infer_images_per_s") or 0) <= 0:
            raise PlanError(
                f"{result.get('backbone', '?')}: compare recorded no usable speeds "
                "(train_images_per_s, infer_images_per_s, epoch_seconds); rerun compare"
            )
        return cls(
            backbone=str(result["backbone"]),
            score=float(score),
            train_images_per_s=rate,
            infer_images_per_s=float(result["infer_images_per_s"]),
            epoch_seconds=epoch,
            train_images=images or max(1, round(rate * epoch)),
            first_epoch_seconds=float(result.get("first_epoch_seconds") or epoch),
            overhead_seconds=float(result.get("overhead_seconds") or 0.0),
        )


@dataclass(frozen=True)
class Workload:
    """How much work the rest of the run is, in images."""

    train_images: int  # per epoch of a member
    val_images: int  # validated every epoch, and scored by ensemble per view
    eval_images: int  # what evaluate scores clean (test + Bmk), per view
    corruption_images: int  # corruption sets x severities x images (x2 with BN adaptation)
    full_epochs: int  # a member's full length: the profile's train.epochs
    warmup_epochs: int = 0  # frozen warm-up epochs a pretrained member trains first
    # Writing the corruption sets, once whatever the ensemble: timed on this machine.
    generation_seconds: float = 0.0


@dataclass(frozen=True)
class Budget:
    """The time this plan may spend, and how members share the machine."""

    seconds_left: float  # from now to the run's deadline
    spent_seconds: float = 0.0  # from the run's start to now (only reported)
    parallel: bool = False  # members side by side on separate nodes
    margin: float = 0.15  # share of seconds_left kept in reserve
    max_members: int = 3
    # The longest a member may train once lengthen_at members are at full length; 0: full length.
    max_epochs: int = 0
    # Members at full length before the time left lengthens them; 0: max_members. Members
    # beyond it join only at the lengthened length.
    lengthen_at: int = 0
    views: int = 1  # the test-time views the config asks for
    seed: int = 1337
    # Backbones within this score of the best are as good: members alternate over them;
    # otherwise every member is a new seed of the best one.
    diversity: float = 0.02
    task_start_seconds: float = 10.0  # starting a task: a process, imports (estimate)


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class PlannedMember:
    backbone: str
    seed: int
    epochs: int
    predicted_seconds: float
    # Seconds from the plan's time at which this member must stop (its share of the budget).
    deadline_offset: float


@dataclass(frozen=True)
class Plan:
    members: tuple[PlannedMember, ...]
    views: int
    predicted: dict[str, float]  # train, ensemble, evaluate, total, reserve, seconds_left
    candidates: tuple[str, ...]  # the backbones members alternate over
    inputs: dict[str, Any] = field(default_factory=dict)
    tune: str = "as configured: tune runs before the plan, on compare's top k"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- cost model


def epoch_seconds(m: Measured, work: Workload) -> float:
    """One epoch of a member: compare's training speed on train's images, plus validation.

    Compare's epoch covers its own training images and the whole val split; validation is
    taken out at the inference speed (keeping at least a fifth of the epoch as training)
    before scaling the training part to the member's images.
    """
    validation = work.val_images / m.infer_images_per_s
    training = max(m.epoch_seconds - validation, 0.2 * m.epoch_seconds)
    return work.train_images * training / m.train_images + validation


def member_seconds(m: Measured, work: Workload, epochs: int, start: float) -> float:
    """A member's task: start-up, compare's overhead, the first epoch's extra, its epochs."""
    first_extra = max(m.first_epoch_seconds - m.epoch_seconds, 0.0)
    total_epochs = epochs + work.warmup_epochs
    return start + m.overhead_seconds + first_extra + total_epochs * epoch_seconds(m, work)


def inference_seconds(members: Sequence[Measured], images: int, views: int) -> float:
    """``images`` through the ensemble of ``members``, each on ``views`` views."""
    return views * images * sum(1.0 / m.infer_images_per_s for m in members)


def fixed_seconds(members: Sequence[Measured], work: Workload, views: int, start: float) -> dict:
    """What ensemble and evaluate cost for ``members`` at ``views`` views."""
    ensemble = start + inference_seconds(members, work.val_images, views)
    scoring = inference_seconds(members, work.eval_images + work.corruption_images, views)
    evaluate = start + work.generation_seconds + scoring
    return {"ensemble": ensemble, "evaluate": evaluate}


def _train_seconds(costs: Sequence[float], parallel: bool) -> float:
    return max(costs) if parallel else sum(costs)


def _max_epochs(team: Sequence[Measured], work: Workload, budget: Budget, views: int) -> int:
    """The most epochs every member of ``team`` can train within the usable budget."""
    usable = budget.seconds_left * (1.0 - budget.margin)
    fixed = sum(fixed_seconds(team, work, views, budget.task_start_seconds).values())
    base = [member_seconds(m, work, 0, budget.task_start_seconds) for m in team]
    per = [epoch_seconds(m, work) for m in team]
    room = usable - fixed
    if budget.parallel:
        return min(math.floor((room - b) / p) for b, p in zip(base, per, strict=True))
    return math.floor((room - sum(base)) / sum(per))


def team(ranked: Sequence[Measured], count: int, diversity: float) -> list[Measured]:
    """``count`` members: alternating over backbones within ``diversity`` of the best."""
    best = ranked[0].score
    close = [m for m in ranked if m.score >= best - diversity]
    return [close[i % len(close)] for i in range(count)]


def minimum_minutes(ranked: Sequence[Measured], work: Workload, budget: Budget) -> float:
    """The shortest time limit (from the run's start) that fits one epoch of one member."""
    best = ranked[0]
    need = member_seconds(best, work, 1, budget.task_start_seconds) + sum(
        fixed_seconds([best], work, 1, budget.task_start_seconds).values()
    )
    return (budget.spent_seconds + need / (1.0 - budget.margin)) / 60.0


def make_plan(measured: Sequence[Measured], work: Workload, budget: Budget) -> Plan:
    """The plan for ``budget``: members, epochs and views, with predicted seconds for each."""
    if not measured:
        raise PlanError("plan: no backbone was compared; nothing to plan")
    ranked = sorted(measured, key=lambda m: (-m.score, m.backbone))
    # Members and epochs are planned at one view, so more budget never buys fewer of them;
    # views come out of what is left once they are fixed.
    if _max_epochs(ranked[:1], work, budget, 1) < 1:
        need = minimum_minutes(ranked, work, budget)
        raise PlanError(
            f"time limit too short: this machine needs at least {need:.1f} min for one epoch "
            f"of {ranked[0].backbone} (spent {budget.spent_seconds / 60:.1f} min so far, "
            f"{budget.seconds_left / 60:.1f} min left, {budget.margin:.0%} kept in reserve)"
        )
    chosen, epochs = team(ranked, 1, budget.diversity), 0
    lengthen_at = min(budget.lengthen_at or budget.max_members, budget.max_members)
    longest = max(work.full_epochs, budget.max_epochs)
    for count in range(1, budget.max_members + 1):
        candidate = team(ranked, count, budget.diversity)
        fit = _max_epochs(candidate, work, budget, 1)
        # Up to lengthen_at, a member joins at full length; beyond it, only at the longest.
        if count > 1 and fit < (work.full_epochs if count <= lengthen_at else longest):
            break
        # From lengthen_at members on, the time left lengthens every member.
        chosen, epochs = candidate, min(fit, longest if count >= lengthen_at else work.full_epochs)
    views = next(
        v
        for v in VIEW_CHOICES
        if v == 1 or (v <= budget.views and _max_epochs(chosen, work, budget, v) >= epochs)
    )
    start = budget.task_start_seconds
    costs = [member_seconds(m, work, epochs, start) for m in chosen]
    fixed = fixed_seconds(chosen, work, views, start)
    train = _train_seconds(costs, budget.parallel)
    window = budget.seconds_left * (1.0 - budget.margin) - sum(fixed.values())
    members, done = [], 0.0
    for i, (m, cost) in enumerate(zip(chosen, costs, strict=True)):
        done += cost
        # Each member may use its share of what training may take, slack included.
        offset = window if budget.parallel else window * done / train
        members.append(PlannedMember(m.backbone, budget.seed + i, epochs, cost, offset))
    total = train + fixed["ensemble"] + fixed["evaluate"]
    predicted = {
        "train": train,
        "ensemble": fixed["ensemble"],
        "evaluate": fixed["evaluate"],
        "total": total,
        "reserve": budget.seconds_left - total,
        "seconds_left": budget.seconds_left,
        "spent": budget.spent_seconds,
    }
    inputs = {
        "measured": [asdict(m) for m in ranked],
        "workload": asdict(work),
        "budget": asdict(budget),
        "epoch_seconds": {m.backbone: epoch_seconds(m, work) for m in ranked},
    }
    close = tuple(dict.fromkeys(m.backbone for m in team(ranked, len(ranked), budget.diversity)))
    return Plan(tuple(members), views, predicted, close, inputs)
