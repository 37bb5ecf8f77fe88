"""The DINO self-distillation loss (SPEC §3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dino.distributed import all_reduce_sum, get_world_size
from dino.train.schedules import teacher_temperature_schedule

__all__ = ["DINOLoss"]

# SPEC §3: only the two global crops go through the teacher.
NUM_TEACHER_VIEWS = 2


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student over every pair of views
    that are not the same crop: ``2 · ncrops − 2`` terms, averaged.

    The softmaxes run in fp32 whatever the autocast dtype of the network outputs. After each forward the
    center (a buffer, saved in checkpoints under ``dino_loss``) moves towards the batch mean of the raw
    teacher outputs, summed over all ranks.

    Args:
        out_dim: Number of prototypes K.
        ncrops: Crops per image seen by the student (2 global + local).
        warmup_teacher_temp: Teacher temperature at epoch 0.
        teacher_temp: Teacher temperature after the warm-up.
        warmup_teacher_temp_epochs: Epochs of linear warm-up (the schedule is per epoch, SPEC §15.3).
        nepochs: Length of the run, in epochs.
        student_temp: Student temperature.
        center_momentum: EMA momentum of the center.
    """

    def __init__(
        self,
        out_dim: int,
        ncrops: int,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_temp_epochs: int,
        nepochs: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = teacher_temperature_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs
        )
        # Mean entropy of the centred, sharpened teacher distributions of the last forward (SPEC §3
        # collapse diagnostics): loss − entropy = KL(teacher ‖ student).
        self.last_teacher_entropy: Tensor = torch.zeros(())

    @property
    def uniform_loss(self) -> float:
        """ln K: the loss of a collapse to the uniform distribution."""
        return math.log(self.center.shape[-1])

    def forward(self, student_output: Tensor, teacher_output: Tensor, epoch: int) -> Tensor:
        """Loss of one step; also updates the center.

        Args:
            student_output: (ncrops · B, K) head outputs of all crops, crop-major.
            teacher_output: (2 · B, K) head outputs of the two global crops.
            epoch: Current epoch, which selects the teacher temperature.
        """
        student_out = (student_output.float() / self.student_temp).chunk(self.ncrops)
        temp = float(self.teacher_temp_schedule[epoch])
        teacher_probs = F.softmax((teacher_output.float() - self.center) / temp, dim=-1).detach()
        teacher_out = teacher_probs.chunk(NUM_TEACHER_VIEWS)

        total_loss = student_output.new_zeros((), dtype=torch.float32)
        n_loss_terms = 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    # The student and the teacher see the same view: no term.
                    continue
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss = total_loss + loss.mean()
                n_loss_terms += 1
        total_loss = total_loss / n_loss_terms
        self.last_teacher_entropy = -(teacher_probs * torch.log(teacher_probs.clamp_min(1e-30))).sum(-1).mean()
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        """``center ← m · center + (1 − m) · mean of raw teacher outputs over both views and all ranks``."""
        batch_center = torch.sum(teacher_output.float(), dim=0, keepdim=True)
        all_reduce_sum(batch_center)
        batch_center = batch_center / (len(teacher_output) * get_world_size())
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)
