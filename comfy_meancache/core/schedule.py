"""The compute/skip plan: the object behind the ``MEANCACHE_SCHEDULE`` socket.

A :class:`Schedule` is plain, immutable data: the sigma grid it was planned
for, which steps call the model, the span each skipped step's estimator uses,
the planner settings and the predicted cost of every skipped edge. Planning
produces it, the stepper consumes it and the report renders it; nothing in a
run reaches back into the planner.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from .estimators import ADAPTIVE, BASE_ESTIMATORS, ESTIMATORS

SCHEDULE_FORMAT = "comfy-meancache-schedule"
SCHEDULE_VERSION = 1
MEASURED_WARMUP = 1  # leading steps a plan from costs measured on the model computes


@dataclass(frozen=True)
class PlannerSettings:
    """How a schedule was planned (kept for reports and re-planning)."""

    gamma: float = 2.0
    warmup: int = 3
    max_gap: int = 8
    max_span: int = 6
    cost_source: str = "prior"
    preset: str = "custom"
    cost_key: str = "prior"  # the Planner's cost_source choice, to re-plan other grids from the same source

    def for_measured_costs(self) -> PlannerSettings:
        """These settings for costs measured on the model itself (learned or calibrated): only step 0 forced.

        The warm-up protects a plan that knows nothing of the model (even or
        prior costs); measured costs price the first edges themselves. On the
        zoo (6 held-out seeds, all cells) computing only step 0 gained 2.5 dB
        on average for learned and for calibrated costs, in every model. A
        warm-up set by hand (the custom preset) is the caller's to keep.
        """
        return replace(self, warmup=MEASURED_WARMUP)


@dataclass(frozen=True)
class Edge:
    """Model calls at ``start`` and ``end``, steps in between skipped with ``span``."""

    start: int
    end: int
    span: int
    cost: float | None
    estimator: str = ""


@dataclass(frozen=True)
class Schedule:
    """A validated compute/skip plan over ``len(sigmas) - 1`` sampler steps.

    ``span[i]`` is 0 on computed steps; on a skipped step it is the estimator's
    span ``K`` (for ``meancache2`` the distance back to the older of the two
    computed steps its JVP uses). ``budget`` is the model-call budget the plan
    was asked for; the plan itself may use fewer calls. A fragment (one
    sampler's part of a split run, see :meth:`fragment`) carries ``part_of``:
    its first step in the planned run and that run's step count; it may end
    on a skipped step.
    """

    sigmas: tuple[float, ...]
    compute: tuple[bool, ...]
    span: tuple[int, ...]
    estimator: str
    budget: int
    settings: PlannerSettings = field(default_factory=PlannerSettings)
    edges: tuple[Edge, ...] = ()
    notes: tuple[str, ...] = ()
    part_of: tuple[int, int] | None = None
    step_estimators: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))
        object.__setattr__(self, "compute", tuple(bool(c) for c in self.compute))
        object.__setattr__(self, "span", tuple(int(k) for k in self.span))
        object.__setattr__(self, "edges", tuple(self.edges))
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "step_estimators", tuple(self.step_estimators))
        if self.part_of is not None:
            object.__setattr__(self, "part_of", (int(self.part_of[0]), int(self.part_of[1])))
        validate(self)

    @property
    def steps(self) -> int:
        return len(self.compute)

    @property
    def model_calls(self) -> int:
        return sum(self.compute)

    @property
    def speedup(self) -> float:
        return self.steps / self.model_calls

    @property
    def computed_steps(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.compute) if c)

    def estimator_at(self, step: int) -> str:
        """The base estimator of skipped ``step`` (per step for ``adaptive`` plans)."""
        return self.step_estimators[step] if self.estimator == ADAPTIVE else self.estimator

    @property
    def history_window(self) -> int:
        """How many recent used velocities a skip may read (``meancache`` reads ``K``; the others none)."""
        spans = [k for i, k in enumerate(self.span) if not self.compute[i] and self.estimator_at(i) == "meancache"]
        return max(spans, default=1)

    def summary(self) -> str:
        """One line, e.g. ``50 steps -> 20 model calls (2.50x), skips 30, spans K=2..5``."""
        skips = self.steps - self.model_calls
        text = f"{self.steps} steps -> {self.model_calls} model calls ({self.speedup:.2f}x), skips {skips}"
        spans = sorted({k for k, c in zip(self.span, self.compute) if not c})
        if spans:
            text += f", spans K={spans[0]}" + (f"..{spans[-1]}" if spans[-1] != spans[0] else "")
        if self.estimator == ADAPTIVE and skips:
            used = [self.estimator_at(i) for i, c in enumerate(self.compute) if not c]
            text += " (" + ", ".join(f"{e} x{used.count(e)}" for e in BASE_ESTIMATORS if e in used) + ")"
        return text

    def with_notes(self, *notes: str) -> Schedule:
        return replace(self, notes=self.notes + tuple(notes))

    def fragment_start(self, run_sigmas: Sequence[float], rtol: float = 1e-5) -> int | None:
        """Where ``run_sigmas`` sit inside this plan's grid as a contiguous slice, if they do.

        The last run sigma may also be 0 where the plan goes on (a sampler
        that forces full denoise at its end, e.g. KSamplerAdvanced).
        """
        run = [float(s) for s in run_sigmas]
        if len(run) < 2 or len(run) > len(self.sigmas):
            return None

        def same(a: float, b: float) -> bool:
            return abs(a - b) <= rtol * max(abs(b), 1e-3)

        for start in range(len(self.sigmas) - len(run) + 1):
            grid = self.sigmas[start : start + len(run)]
            if all(same(a, b) for a, b in zip(run[:-1], grid)) and (same(run[-1], grid[-1]) or run[-1] == 0.0):
                return start
        return None

    def fragment(self, start: int, run_sigmas: Sequence[float]) -> Schedule:
        """This plan's steps ``start .. start + len(run_sigmas) - 2``, for a sampler that runs only those.

        A fragment starts without velocity history, so a planned skip at its
        first step is computed (one call more, said in a note); every other
        step follows the plan.
        """
        sigmas = [float(s) for s in run_sigmas]
        stop = start + len(sigmas) - 1
        compute = list(self.compute[start:stop])
        span = list(self.span[start:stop])
        used = list(self.step_estimators[start:stop])
        notes = [f"fragment: steps {start}..{stop - 1} of the {self.steps}-step plan"]
        if not compute[0]:
            compute[0], span[0] = True, 0
            used[:1] = [""] * len(used[:1])
            notes.append(f"step {start} computed although planned to skip: a fragment starts without history")
        span = _spans_for(self.estimator, compute, span, used)
        edges = tuple(
            replace(e, start=e.start - start, end=e.end - start) for e in self.edges if start <= e.start < e.end < stop
        )
        return Schedule(
            sigmas=sigmas,
            compute=compute,
            span=span,
            estimator=self.estimator,
            budget=sum(compute),
            settings=self.settings,
            edges=edges,
            notes=self.notes + tuple(notes),
            part_of=(start + (self.part_of[0] if self.part_of else 0), self.part_of[1] if self.part_of else self.steps),
            step_estimators=used,
        )

    def remap(self, new_sigmas: Sequence[float]) -> Schedule:
        """This plan moved onto another sigma grid by sigma position, not by step index.

        The last resort when re-planning on the new grid is not possible (and
        how the fixed official lists travel). Each computed step lands on the
        new step nearest in sigma; the warm-up steps and the last step stay
        computed and the number of model calls is scaled to keep the speedup
        (splitting the longest gaps, or merging the shortest ones), never
        below the fewest calls the warm-up and max gap allow and never with a
        gap beyond the max gap. Spans follow the old plan's span at the
        nearest sigma. Predicted edge costs do not carry over.
        """
        sigmas = [float(s) for s in new_sigmas]
        n = len(sigmas) - 1
        if n < 1:
            raise ValueError("cannot remap onto fewer than 2 sigmas")
        if n <= self.settings.warmup:
            note = f"{n} steps <= warm-up {self.settings.warmup}: every step computed"
            return _all_computed(self, sigmas, note)
        forced = set(range(max(self.settings.warmup, 1))) | {n - 1}
        wanted = round(self.model_calls * n / self.steps)
        target = min(n, max(len(forced), fewest_calls(n, self.settings), wanted))
        nodes = {_nearest(sigmas[:-1], self.sigmas[i]) for i in self.computed_steps} | forced
        nodes = _resize(sorted(nodes), target, forced, self.settings.max_gap)
        compute = [i in nodes for i in range(n)]
        old_span, old_estimator = self._span_by_step(), self._estimator_by_step()
        nearest = [_nearest(self.sigmas[:-1], s) for s in sigmas[:-1]]
        span = [0 if c else old_span[nearest[i]] for i, c in enumerate(compute)]
        used = [("" if c else old_estimator[nearest[i]]) for i, c in enumerate(compute)] if old_estimator else []
        note = f"remapped {self.summary()} onto {n} steps by sigma"
        return _build(self, sigmas, compute, span, note, used)

    def _span_by_step(self) -> list[int]:
        """Span per old step, where a computed step takes the span of the skips after it."""
        span = list(self.span)
        for i in range(len(span) - 1, -1, -1):
            if span[i] == 0:
                span[i] = span[i + 1] if i + 1 < len(span) and span[i + 1] else 1
        return span

    def _estimator_by_step(self) -> list[str]:
        """For adaptive plans, the estimator per old step, a computed step taking that of the skips after it."""
        if self.estimator != ADAPTIVE:
            return []
        used = list(self.step_estimators)
        for i in range(len(used) - 1, -1, -1):
            if self.compute[i]:
                used[i] = used[i + 1] if i + 1 < len(used) and not self.compute[i + 1] else "reuse"
        return used

    def to_dict(self) -> dict:
        return {
            "format": SCHEDULE_FORMAT,
            "version": SCHEDULE_VERSION,
            "sigmas": list(self.sigmas),
            "compute": list(self.compute),
            "span": list(self.span),
            "estimator": self.estimator,
            "budget": self.budget,
            "model_calls": self.model_calls,
            "settings": asdict(self.settings),
            "edges": [asdict(e) for e in self.edges],
            "notes": list(self.notes),
            "part_of": list(self.part_of) if self.part_of else None,
            "step_estimators": list(self.step_estimators),
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> Schedule:
        if not isinstance(data, dict) or data.get("format") != SCHEDULE_FORMAT:
            raise ValueError(f"not a MeanCache schedule (expected format {SCHEDULE_FORMAT!r})")
        if data.get("version") != SCHEDULE_VERSION:
            raise ValueError(
                f"schedule version {data.get('version')!r} is not supported (this pack reads {SCHEDULE_VERSION})"
            )
        try:
            return cls(
                sigmas=data["sigmas"],
                compute=data["compute"],
                span=data["span"],
                estimator=data["estimator"],
                budget=data["budget"],
                settings=PlannerSettings(**data.get("settings", {})),
                edges=tuple(Edge(**e) for e in data.get("edges", [])),
                notes=tuple(data.get("notes", [])),
                part_of=tuple(data["part_of"]) if data.get("part_of") else None,
                step_estimators=tuple(data.get("step_estimators", [])),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed schedule: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        return cls.from_dict(json.loads(text))


def validate(schedule: Schedule) -> None:
    """Raise ``ValueError`` with a human message if ``schedule`` is inconsistent."""
    n = len(schedule.compute)
    if n < 1:
        raise ValueError("a schedule needs at least one step")
    if len(schedule.sigmas) != n + 1:
        raise ValueError(f"{n} steps need {n + 1} sigmas, got {len(schedule.sigmas)}")
    if len(schedule.span) != n:
        raise ValueError(f"{n} steps need {n} spans, got {len(schedule.span)}")
    if not all(math.isfinite(s) and s >= 0.0 for s in schedule.sigmas):
        raise ValueError("sigmas must be finite and >= 0")
    if any(b > a for a, b in zip(schedule.sigmas, schedule.sigmas[1:])):
        raise ValueError("sigmas must not increase along the schedule")
    if schedule.estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {schedule.estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if not schedule.compute[0]:
        raise ValueError("the first step must be computed")
    if not schedule.compute[-1] and schedule.part_of is None:
        raise ValueError("the last step must be computed")
    if schedule.part_of is not None and not 0 <= schedule.part_of[0] <= schedule.part_of[1] - n:
        raise ValueError(f"fragment {schedule.part_of} does not hold {n} steps")
    if schedule.model_calls > schedule.budget:
        raise ValueError(f"compute steps {schedule.model_calls} > budget {schedule.budget}")
    if schedule.budget > n:
        raise ValueError(f"compute steps {schedule.budget} > steps {n}")
    if schedule.estimator == ADAPTIVE:
        if len(schedule.step_estimators) != n:
            raise ValueError(
                f"an adaptive plan names an estimator per step: {n} needed, got {len(schedule.step_estimators)}"
            )
        for i, (c, e) in enumerate(zip(schedule.compute, schedule.step_estimators)):
            if not c and e not in BASE_ESTIMATORS:
                raise ValueError(f"skipped step {i}: estimator {e!r} is not one of {', '.join(BASE_ESTIMATORS)}")
    elif schedule.step_estimators:
        raise ValueError(f"per-step estimators are for adaptive plans, not {schedule.estimator!r}")
    for i, (c, k) in enumerate(zip(schedule.compute, schedule.span)):
        if c and k != 0:
            raise ValueError(f"computed step {i} has span {k}; computed steps carry span 0")
        if not c and k < 1:
            raise ValueError(f"skipped step {i} needs a span >= 1, got {k}")


def meancache2_spans(compute: Sequence[bool]) -> list[int]:
    """Per step, the distance from the edge start back to the computed step before it (1 if none)."""
    spans, nodes = [], []
    for i, c in enumerate(compute):
        if c:
            nodes.append(i)
            spans.append(0)
        else:
            spans.append(nodes[-1] - nodes[-2] if len(nodes) > 1 else 1)
    return spans


def _nearest(grid: Sequence[float], sigma: float) -> int:
    return min(range(len(grid)), key=lambda i: (abs(grid[i] - sigma), i))


def fewest_calls(n: int, settings: PlannerSettings) -> int:
    """The fewest model calls ``n`` steps allow under the warm-up and max-gap limits."""
    warm = min(max(settings.warmup, 1), n)
    tail = n - warm
    return warm + (-(-tail // settings.max_gap) if tail > 0 else 0)


def _resize(nodes: list[int], target: int, forced: set[int], max_gap: int) -> set[int]:
    """Add or drop nodes (never ``forced`` ones) towards ``target``, keeping gaps even and within ``max_gap``.

    Gaps wider than ``max_gap`` are split first, even past ``target``; a node
    is dropped only where the merged gap stays within ``max_gap``.
    """
    nodes = list(nodes)
    while max(b - a for a, b in zip(nodes, nodes[1:])) > max_gap:
        widest = max(range(len(nodes) - 1), key=lambda k: (nodes[k + 1] - nodes[k], -k))
        nodes.insert(widest + 1, nodes[widest] + max_gap)
    while len(nodes) > target:
        merged = [
            (nodes[k + 1] - nodes[k - 1], k)
            for k in range(1, len(nodes) - 1)
            if nodes[k] not in forced and nodes[k + 1] - nodes[k - 1] <= max_gap
        ]
        if not merged:
            break
        nodes.pop(min(merged)[1])
    while len(nodes) < target:
        widest = max(range(len(nodes) - 1), key=lambda k: (nodes[k + 1] - nodes[k], -k))
        nodes.insert(widest + 1, (nodes[widest] + nodes[widest + 1]) // 2)
    return set(nodes)


def _spans_for(estimator: str, compute: list[bool], span: list[int], used: Sequence[str]) -> list[int]:
    """Spans after the computed steps changed: ``meancache2`` skips take the distance their JVP spans."""
    derived = meancache2_spans(compute)
    return [
        derived[i] if not c and (used[i] if estimator == ADAPTIVE else estimator) == "meancache2" else span[i]
        for i, c in enumerate(compute)
    ]


def _all_computed(schedule: Schedule, sigmas: list[float], note: str) -> Schedule:
    n = len(sigmas) - 1
    used = [""] * n if schedule.estimator == ADAPTIVE else []
    return _build(schedule, sigmas, [True] * n, [0] * n, note, used)


def _build(
    schedule: Schedule, sigmas: list[float], compute: list[bool], span: list[int], note: str, used: list[str]
) -> Schedule:
    span = _spans_for(schedule.estimator, compute, span, used)
    n = len(compute)
    return Schedule(
        sigmas=sigmas,
        compute=compute,
        span=span,
        estimator=schedule.estimator,
        budget=min(n, max(sum(compute), round(schedule.budget * n / schedule.steps))),
        settings=schedule.settings,
        edges=tuple(Edge(a, b, span[a + 1], None, used[a + 1] if used else "") for a, b in _edge_pairs(compute)),
        notes=schedule.notes + (note,),
        step_estimators=used,
    )


def _edge_pairs(compute: Sequence[bool]) -> list[tuple[int, int]]:
    nodes = [i for i, c in enumerate(compute) if c]
    return [(a, b) for a, b in zip(nodes, nodes[1:]) if b - a > 1]
