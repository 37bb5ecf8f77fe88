"""Revisited Oxford and Paris (revisitop): the dataset layout, its ground truth and its mAP (SPEC §13, §20).

Layout: ``ROOT/<name>/gnd_<name>.pkl`` (``imlist``, ``qimlist``, and per query ``bbx``, ``easy``, ``hard``,
``junk``) and ``ROOT/<name>/jpg/<id>.jpg``. :func:`compute_map` is revisitop's ``compute_map`` line for line,
with ``np.isin`` in place of ``np.in1d`` (removed in numpy 2.4).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATASETS",
    "KAPPAS",
    "PROTOCOLS",
    "RevisitopDataset",
    "compute_ap",
    "compute_map",
    "evaluate_protocols",
    "load_dataset",
    "protocol_ground_truth",
]

DATASETS = ("roxford5k", "rparis6k")
# SPEC §13: precision is reported at 1, 5 and 10.
KAPPAS: tuple[int, ...] = (1, 5, 10)
# revisitop's three setups: which labels count as positives and which are ignored ("junk").
# Easy: ok = easy, junk = junk ∪ hard. Medium: ok = easy ∪ hard, junk = junk. Hard: ok = hard, junk = junk ∪ easy.
PROTOCOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}
# The image-id lists every query's ground truth holds.
GROUND_TRUTH_KEYS = ("easy", "hard", "junk")
IMAGE_FOLDER = "jpg"
IMAGE_EXTENSION = ".jpg"
# What a revisitop ground-truth pickle may contain: plain containers and numpy arrays, nothing executable.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


@dataclass
class RevisitopDataset:
    """A revisitop dataset.

    Attributes:
        name: e.g. ``roxford5k``.
        folder: ``ROOT/<name>``.
        imlist: Database image ids.
        qimlist: Query image ids.
        gnd: Per query: ``bbx`` (x1, y1, x2, y2), ``easy``, ``hard``, ``junk`` (indices into `imlist`).
    """

    name: str
    folder: Path
    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict[str, Any]]

    def image_path(self, image_id: str) -> Path:
        return self.folder / IMAGE_FOLDER / f"{image_id}{IMAGE_EXTENSION}"

    @property
    def database(self) -> list[Path]:
        return [self.image_path(i) for i in self.imlist]

    @property
    def queries(self) -> list[Path]:
        return [self.image_path(i) for i in self.qimlist]


class _GroundTruthUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_dataset(root: str | os.PathLike[str], name: str) -> RevisitopDataset:
    """Read ``ROOT/<name>/gnd_<name>.pkl`` and check that every listed image exists.

    Raises:
        FileNotFoundError: The pickle or an image is missing (the message says what was expected).
        ValueError: The pickle is not a revisitop ground truth.
    """
    folder = Path(root) / name
    gnd_file = folder / f"gnd_{name}.pkl"
    if not gnd_file.is_file():
        raise FileNotFoundError(
            f"{gnd_file}: no such file; expected the revisitop layout ROOT/{name}/gnd_{name}.pkl and "
            f"ROOT/{name}/jpg/<id>.jpg (see http://cmp.felk.cvut.cz/revisitop/)"
        )
    try:
        with open(gnd_file, "rb") as handle:
            config = _GroundTruthUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ValueError(f"{gnd_file}: not a revisitop ground-truth pickle ({error})") from None
    if not isinstance(config, dict) or not {"imlist", "qimlist", "gnd"} <= config.keys():
        raise ValueError(f"{gnd_file}: not a revisitop ground truth (expected keys imlist, qimlist, gnd)")
    dataset = RevisitopDataset(
        name=name,
        folder=folder,
        imlist=[str(i) for i in config["imlist"]],
        qimlist=[str(i) for i in config["qimlist"]],
        gnd=list(config["gnd"]),
    )
    if len(dataset.gnd) != len(dataset.qimlist):
        raise ValueError(f"{gnd_file}: {len(dataset.qimlist)} queries but {len(dataset.gnd)} ground-truth entries")
    for number, entry in enumerate(dataset.gnd):
        lacking = [key for key in GROUND_TRUTH_KEYS if not isinstance(entry, dict) or key not in entry]
        if lacking:
            raise ValueError(
                f"{gnd_file}: the ground truth of query {number} has no {', '.join(lacking)} list (revisitop "
                f"entries hold {', '.join(GROUND_TRUTH_KEYS)}; the original Oxford/Paris ok/junk files are not read)"
            )
    missing = [p for p in dict.fromkeys((*dataset.queries, *dataset.database)) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) of {name} are missing under {folder / IMAGE_FOLDER}, e.g. {missing[0]}"
        )
    return dataset


def compute_ap(ranks: np.ndarray, nres: int) -> float:
    """Trapezoid average precision of the 0-based, junk-free positions `ranks` of `nres` positives
    (revisitop ``compute_ap``)."""
    ap = 0.0
    recall_step = 1.0 / nres
    for j, rank in enumerate(ranks):
        precision_0 = 1.0 if rank == 0 else float(j) / rank
        precision_1 = float(j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    return ap


def compute_map(
    ranks: np.ndarray, gnd: Sequence[dict[str, Any]], kappas: Sequence[int] = ()
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """revisitop ``compute_map``: mAP, per-query AP, mP@k and per-query P@k, with junk removed.

    Args:
        ranks: (n_db, n_queries): column i lists database indices for query i, best first.
        gnd: Per query, ``ok`` (positives) and optionally ``junk`` (ignored) database indices.
        kappas: The k of precision@k.

    Returns:
        ``(map, aps, pr, prs)``. Queries without positives are NaN in `aps`/`prs` and skipped in the means.
    """
    total_ap = 0.0
    nq = len(gnd)
    aps = np.zeros(nq)
    pr = np.zeros(len(kappas))
    prs = np.zeros((nq, len(kappas)))
    nempty = 0
    for i in range(nq):
        qgnd = np.array(gnd[i]["ok"])
        if qgnd.shape[0] == 0:
            aps[i] = float("nan")
            prs[i, :] = float("nan")
            nempty += 1
            continue
        qgndj = np.array(gnd[i].get("junk", np.empty(0)))
        # Sorted positions of the positive and junk images (0-based).
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
        k = 0
        ij = 0
        if len(junk):
            # Shift each positive up by the number of junk images ranked before it.
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        ap = compute_ap(pos, len(qgnd))
        total_ap += ap
        aps[i] = ap
        pos += 1  # 1-based for precision@k
        for j, kappa in enumerate(kappas):
            kq = min(max(pos), kappa)
            prs[i, j] = (pos <= kq).sum() / kq
        pr = pr + prs[i, :]
    counted = nq - nempty
    if counted == 0:
        return float("nan"), aps, np.full(len(kappas), np.nan), prs
    return total_ap / counted, aps, pr / counted, prs


def protocol_ground_truth(gnd: Sequence[dict[str, Any]], protocol: str) -> list[dict[str, np.ndarray]]:
    """The ``ok``/``junk`` lists of one revisitop setup (``easy``, ``medium`` or ``hard``)."""
    positives, ignored = PROTOCOLS[protocol]
    return [
        {
            "ok": np.concatenate([np.asarray(entry[key], dtype=np.int64) for key in positives]),
            "junk": np.concatenate([np.asarray(entry[key], dtype=np.int64) for key in ignored]),
        }
        for entry in gnd
    ]


def evaluate_protocols(
    ranks: np.ndarray, gnd: Sequence[dict[str, Any]], kappas: Sequence[int] = KAPPAS
) -> dict[str, dict[str, Any]]:
    """mAP and mP@k (fractions in [0, 1]) and per-query AP of the Easy, Medium and Hard setups."""
    results = {}
    for protocol in PROTOCOLS:
        mean_ap, aps, mean_pr, _ = compute_map(ranks, protocol_ground_truth(gnd, protocol), kappas)
        results[protocol] = {
            "mAP": float(mean_ap),
            "mP@k": {str(k): float(p) for k, p in zip(kappas, mean_pr, strict=True)},
            "AP": [None if np.isnan(ap) else float(ap) for ap in aps],
        }
    return results
