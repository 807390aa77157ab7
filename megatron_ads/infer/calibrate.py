"""Temperature calibration of label probabilities (one temperature per classification field).

How it works
------------
Label mode gives each field's candidates the probabilities ``p = softmax(loglik)`` (``data.tasks``).
A temperature ``T > 0`` rescales them to ``softmax(loglik / T)``; since softmax is shift-invariant this is
``softmax(log p / T)``, so calibration works on the probabilities a prediction row already carries.
``T > 1`` softens over-confident probabilities, ``T < 1`` sharpens; the argmax (the label) never changes.

``fit_temperature`` picks the T minimizing the mean negative log-likelihood of the gold classes on a
validation split. The NLL is convex in ``1/T`` (a log-sum-exp of a linear function minus a linear
term), hence unimodal in ``log T``: a golden-section search over ``log T`` in ``[log t_min, log t_max]``
finds it to ``tol`` (deterministic, no gradients). ``fit_task`` does it for every classification field
of a task from prediction rows and gold rows, reporting NLL and expected calibration error
(``eval.metrics.expected_calibration_error``) before and after; ``Calibration`` saves and loads that
report as a small JSON file, which ``apply`` uses to rewrite the rows' ``probs``.

File (``Calibration.save``)::

    {"task": "query_ad", "n_bins": 15, "source": "val.jsonl",
     "fields": {"relevance": {"temperature": 1.8, "n": 40, "nll_before": .., "nll_after": ..,
                              "ece_before": .., "ece_after": ..}, ...}}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_ads.data.tasks import Task
from megatron_ads.eval.metrics import ECE_BINS, expected_calibration_error
from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.io import write_json

T_MIN, T_MAX = 1e-2, 1e2
"""The range ``fit_temperature`` searches."""


def _scaled(p: list[float], t: float) -> list[float]:
    logs = [math.log(x) if x > 0 else -math.inf for x in p]
    top = max(logs)
    e = [math.exp((v - top) / t) if v > -math.inf else 0.0 for v in logs]
    s = sum(e)
    return [x / s for x in e]


def nll(probs: list[list[float]], gold: list[int], t: float = 1.0) -> float:
    """Mean negative log-likelihood of the gold classes under ``softmax(log p / t)``."""
    if not probs:
        return float("nan")
    total = 0.0
    for p, g in zip(probs, gold):
        q = _scaled(p, t)[g]
        total += -math.log(q) if q > 0 else 745.0  # exp(-745) is the smallest double > 0
    return total / len(probs)


def fit_temperature(probs: list[list[float]], gold: list[int], t_min: float = T_MIN, t_max: float = T_MAX,
                    tol: float = 1e-6) -> float:
    """The temperature minimizing ``nll(probs, gold, T)`` over ``[t_min, t_max]`` (golden-section search
    on log T, to ``tol`` in log T). ``probs``: rows of class probabilities; ``gold``: class indices."""
    if len(probs) != len(gold) or not probs:
        raise ValueError(f"fit_temperature: expected as many gold labels as rows (>= 1), got {len(gold)} "
                         f"for {len(probs)} rows")
    if not 0 < t_min < t_max:
        raise ValueError(f"t_min, t_max: expected 0 < t_min < t_max, got {t_min}, {t_max}")
    lo, hi = math.log(t_min), math.log(t_max)
    r = (math.sqrt(5) - 1) / 2
    a, b = hi - r * (hi - lo), lo + r * (hi - lo)
    fa, fb = nll(probs, gold, math.exp(a)), nll(probs, gold, math.exp(b))
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - r * (hi - lo)
            fa = nll(probs, gold, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + r * (hi - lo)
            fb = nll(probs, gold, math.exp(b))
    return math.exp((lo + hi) / 2)


def apply_temperature(probs: dict[str, float], t: float) -> dict[str, float]:
    """One field's ``{candidate: p}`` rescaled to ``softmax(log p / t)`` (same keys and order)."""
    keys = list(probs)
    return dict(zip(keys, _scaled([float(probs[k]) for k in keys], t)))


@dataclass(kw_only=True, slots=True)
class FieldCalibration:
    """One classification field's fitted temperature and what it did on the validation rows."""

    temperature: float
    """T > 0: probabilities become softmax(loglik / T)."""
    n: int = 0
    """Validation rows it was fitted on."""
    nll_before: float | None = None
    nll_after: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ValueError(f"temperature: expected a finite number > 0, got {self.temperature!r}")


@dataclass(kw_only=True, slots=True)
class Calibration:
    """Temperatures per classification field of one task (``fields`` keyed by the field's name, e.g.
    ``relevance``, ``location``, ``quality`` for query_ad; ``score`` for ad_user)."""

    task: str
    fields: dict[str, FieldCalibration] = field(default_factory=dict)
    n_bins: int = ECE_BINS
    """Bins of the reported ECE."""
    source: str = ""
    """The validation file it was fitted on."""

    def temperatures(self) -> dict[str, float]:
        return {k: f.temperature for k, f in self.fields.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "n_bins": self.n_bins, "source": self.source,
                "fields": {k: {s: getattr(f, s) for s in FieldCalibration.__slots__}
                           for k, f in self.fields.items()}}

    def save(self, path: str | Path) -> Path:
        """Write the JSON file (atomically)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, task: Task | None = None) -> "Calibration":
        """Read a calibration file; with ``task``, check it is that task's and covers each of its
        classification fields. Errors (``BadInput``) name the file and the field."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such calibration file") from None
        except ValueError as exc:
            raise BadInput(f"{path}: not JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("fields"), dict):
            raise BadInput(f"{path}: expected an object with 'task' and 'fields' {{name: {{temperature}}}}")
        fields = {}
        for name, f in data["fields"].items():
            if not isinstance(f, dict) or "temperature" not in f:
                raise BadInput(f"{path}: field 'fields.{name}': expected an object with a 'temperature'")
            try:
                fields[name] = FieldCalibration(**{k: v for k, v in f.items() if k in FieldCalibration.__slots__})
            except (TypeError, ValueError) as exc:
                raise BadInput(f"{path}: fields.{name}.{exc}") from None
        cal = cls(task=str(data.get("task", "")), fields=fields, n_bins=int(data.get("n_bins", ECE_BINS)),
                  source=str(data.get("source", "")))
        if task is not None:
            if cal.task != task.name:
                raise BadInput(f"{path}: field 'task': calibrated for {cal.task!r}, this run labels {task.name!r}")
            missing = [n for n in field_names(task) if n not in cal.fields]
            if missing:
                raise BadInput(f"{path}: field 'fields': no temperature for {missing} (task {task.name} has "
                               f"{field_names(task)})")
        return cal

    def apply(self, task: Task, rows: list[dict]) -> None:
        """Rewrite the ``probs`` of prediction rows in place with this calibration (labels unchanged)."""
        temps = self.temperatures()
        for row in rows:
            for name, probs in row_probs(task, row).items():
                set_row_probs(task, row, name, apply_temperature(probs, temps[name]))


def field_names(task: Task) -> list[str]:
    """Names of the task's classification fields (the keys of ``probs`` when there are several)."""
    return [f.name for f in task.outputs if f.allowed is not None]


def row_probs(task: Task, row: dict) -> dict[str, dict[str, float]]:
    """``{field name: {candidate: p}}`` of a prediction row (one flat ``probs`` for a one-field task)."""
    probs = row.get("probs")
    if not isinstance(probs, dict):
        return {}
    names = field_names(task)
    if len(task.outputs) > 1:
        return {n: probs[n] for n in names if isinstance(probs.get(n), dict)}
    return {names[0]: probs} if names else {}


def set_row_probs(task: Task, row: dict, name: str, probs: dict[str, float]) -> None:
    if len(task.outputs) > 1:
        row["probs"][name] = probs
    else:
        row["probs"] = probs


def _gold_value(row: dict, key: str) -> str:
    cur: Any = row
    for part in key.split("."):
        cur = cur[part]
    return str(cur).strip().lower()


def fit_task(task: Task, preds: list[dict], gold_rows: list[dict], n_bins: int = ECE_BINS,
             source: str = "") -> Calibration:
    """Fit one temperature per classification field of ``task`` on prediction rows (label mode, with
    ``probs``) against their gold rows (same ids, the task's target fields); NLL and ECE before/after."""
    gold_by_id = {str(g["id"]): g for g in gold_rows}
    fields = {}
    for f in task.outputs:
        if f.allowed is None:
            continue
        probs, gold = [], []
        for p in preds:
            cands = row_probs(task, p).get(f.name)
            g = gold_by_id.get(str(p["id"]))
            if cands is None or g is None:
                continue
            value = _gold_value(g, f.key)
            keys = list(cands)
            if value not in keys:
                raise BadInput(f"{source or 'gold'}: id {p['id']!r} field '{f.key}': expected one of {keys}, "
                               f"got {value!r}")
            probs.append([float(cands[k]) for k in keys])
            gold.append(keys.index(value))
        if not probs:
            raise BadInput(f"{source or 'gold'}: no labeled rows with probabilities for field '{f.key}'")
        t = fit_temperature(probs, gold)
        after = [_scaled(p, t) for p in probs]
        fields[f.name] = FieldCalibration(
            temperature=t, n=len(probs), nll_before=nll(probs, gold), nll_after=nll(probs, gold, t),
            ece_before=expected_calibration_error(probs, gold, n_bins),
            ece_after=expected_calibration_error(after, gold, n_bins))
    return Calibration(task=task.name, fields=fields, n_bins=n_bins, source=source)
