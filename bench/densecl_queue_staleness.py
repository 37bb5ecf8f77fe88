"""How much of a DenseCL checkpoint's logged loss comes from stale queues (docs/training.md, the DenseCL proof run).

Computes the global and dense InfoNCE of the checkpoint on 8 fixed batches of 32 images twice: against the queues
stored in the checkpoint (keys of older key encoders, as in training), then against queues refilled by the
checkpoint's own key encoder from other images of the folder (its weights restored after every refill batch, so
no momentum update moves it). Batches mix the folder's images in a fixed random order, as the sampler does; the
evaluation images never enter the refilled queues. ResNet-18 and the neck sizes of `densecl_cpu_small`.

    OMP_NUM_THREADS=1 python bench/densecl_queue_staleness.py runs/densecl-r18/checkpoint0010.pth train-frames
"""

from __future__ import annotations

import argparse
import json

import torch

from dino.data.multicrop import MultiCropDataset
from dino.data.twoview import MoCoV2Augmentation
from dino.models.resnet import ResNetBackbone
from dino.train.densecl import DenseCL, DenseCLOutput

BATCH = 32
EVAL_BATCHES = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a `dino train --method densecl` checkpoint (densecl_cpu_small sizes)")
    parser.add_argument("data", help="the training image folder")
    parser.add_argument("--crop-size", type=int, default=112)
    args = parser.parse_args()
    checkpoint = torch.load(args.checkpoint, weights_only=True)
    queue_len = checkpoint["state_dict"]["queue"].shape[1]
    model = DenseCL(ResNetBackbone(18), hid_dim=512, feat_dim=128, queue_len=queue_len, momentum=0.99)
    model.load_state_dict(checkpoint["state_dict"])
    model.train()
    data = MultiCropDataset(args.data, MoCoV2Augmentation(args.crop_size), seed=123)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()
    held_out = EVAL_BATCHES * BATCH
    key_encoder = {name: value.clone() for name, value in model.encoder_k.state_dict().items()}

    def step(batch: int) -> DenseCLOutput:
        if batch < EVAL_BATCHES:
            positions = [batch * BATCH + j for j in range(BATCH)]
        else:
            first = (batch - EVAL_BATCHES) * BATCH
            positions = [held_out + (first + j) % (len(data) - held_out) for j in range(BATCH)]
        views = [data[(0, order[p])] for p in positions]
        with torch.no_grad():
            out = model(torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views]), 0.5)
        model.encoder_k.load_state_dict(key_encoder)
        return out

    def evaluate() -> dict[str, float]:
        buffers = (model.queue, model.queue_ptr, model.queue2, model.queue2_ptr)
        queues = [buffer.clone() for buffer in buffers]
        total = {"loss_global": 0.0, "loss_dense": 0.0}
        for batch in range(EVAL_BATCHES):
            torch.manual_seed(batch)
            out = step(batch)
            total["loss_global"] += float(out.loss_global) / EVAL_BATCHES
            total["loss_dense"] += float(out.loss_dense) / EVAL_BATCHES
            for buffer, saved in zip(buffers, queues, strict=True):
                buffer.copy_(saved)
        return {key: round(value, 3) for key, value in total.items()}

    stored = evaluate()
    for batch in range(queue_len // BATCH):
        torch.manual_seed(10_000 + batch)
        step(EVAL_BATCHES + batch)
    refilled = evaluate()
    print(json.dumps({"global_step": checkpoint.get("global_step"), "stored_queues": stored, "fresh_queues": refilled}))


if __name__ == "__main__":
    main()
