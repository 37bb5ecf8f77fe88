"""Per-iteration schedules of the DINO recipe (SPEC §5) and of DenseCL's (SPEC §23)."""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_scheduler", "epoch_cosine_scheduler", "teacher_temperature_schedule"]


def cosine_scheduler(
    base_value: float,
    final_value: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """The reference's ``utils.cosine_scheduler``: one value per iteration, ``epochs · niter_per_ep`` long.

    A linear warm-up from `start_warmup_value` to `base_value` over ``warmup_epochs · niter_per_ep``
    iterations (``np.linspace``, inclusive at both ends), then ``final + ½(base − final)(1 + cos(π i / T))``
    for i = 0..T−1, where T is the number of post-warm-up iterations, so `final_value` is approached but
    never reached.
    """
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup, cosine))
    if len(schedule) != epochs * niter_per_ep:
        raise ValueError(f"warm-up ({warmup_epochs} epochs) is longer than the schedule ({epochs} epochs)")
    return schedule


def teacher_temperature_schedule(
    warmup_teacher_temp: float, teacher_temp: float, warmup_teacher_temp_epochs: int, epochs: int
) -> np.ndarray:
    """Per-epoch teacher temperature (SPEC §3): linspace over the warm-up epochs, then constant."""
    return np.concatenate(
        (
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
            np.ones(max(epochs - warmup_teacher_temp_epochs, 0)) * teacher_temp,
        )
    )


def epoch_cosine_scheduler(
    base_value: float, final_value: float, epochs: int, niter_per_ep: int, warmup_epochs: int = 0
) -> np.ndarray:
    """mmcv's ``CosineAnnealingLrUpdaterHook`` as OpenSelfSup's DenseCL configs use it (``by_epoch=True``, its
    default): one value per epoch e, ``final + ½(base − final)(1 + cos(π e / epochs))``, held for the epoch's
    iterations, so the last epoch runs at a small non-zero value and `final_value` is never reached. An optional
    linear warm-up from 0 over the first `warmup_epochs` (the reference has none) replaces their values.
    """
    epoch = np.arange(epochs * niter_per_ep) // niter_per_ep
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * epoch / epochs))
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_iters > len(schedule):
        raise ValueError(f"warm-up ({warmup_epochs} epochs) is longer than the schedule ({epochs} epochs)")
    schedule[:warmup_iters] = np.linspace(0.0, base_value, warmup_iters)
    return schedule
