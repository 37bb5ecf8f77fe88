"""A straightforward, un-chunked port of the reference's `eval_video_segmentation.py` (SPEC §11).

This is the baseline that `apps.video_seg` is tested against (tests/video_seg/test_reference_equivalence.py)
and benchmarked against (bench/video_seg_throughput.py). It keeps the reference's operations and their
order: full (n_ctx, hw, hw) affinity per target frame, the quadruple-loop neighbourhood mask, one top-k
over the transposed (n_ctx·hw, hw) matrix, the per-channel `norm_mask` loop. Only what cannot run here
was changed: no hard-coded `.cuda()`, the global `args` became parameters, and the palette is generated.
Do not optimise this file; its point is to be the reference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def read_frame(path: str | os.PathLike[str], scale_size: int = 480) -> tuple[torch.Tensor, int, int]:
    img = cv2.imread(os.fspath(path))
    ori_h, ori_w, _ = img.shape
    if ori_h > ori_w:
        tw = scale_size
        th = (tw * ori_h) / ori_w
        th = int((th // 64) * 64)
    else:
        th = scale_size
        tw = (th * ori_w) / ori_h
        tw = int((tw // 64) * 64)
    img = cv2.resize(img, (tw, th))
    img = img.astype(np.float32)
    img = img / 255.0
    img = img[:, :, ::-1]
    img = np.transpose(img.copy(), (2, 0, 1))
    img = torch.from_numpy(img).float()
    return color_normalize(img), ori_h, ori_w


def color_normalize(x, mean=(0.485, 0.456, 0.406), std=(0.228, 0.224, 0.225)):
    for t, m, s in zip(x, mean, std, strict=False):
        t.sub_(m)
        t.div_(s)
    return x


def read_seg(path: str | os.PathLike[str], factor: int, scale_size: int = 480):
    seg = Image.open(path)
    _w, _h = seg.size
    if _w > _h:
        _th = scale_size
        _tw = (_th * _w) / _h
        _tw = int((_tw // 64) * 64)
    else:
        _tw = scale_size
        _th = (_tw * _h) / _w
        _th = int((_th // 64) * 64)
    small_seg = np.array(seg.resize((_tw // factor, _th // factor), 0))
    small_seg = torch.from_numpy(small_seg.copy()).contiguous().float().unsqueeze(0)
    return to_one_hot(small_seg), np.asarray(seg)


def to_one_hot(y_tensor, n_dims=None):
    if n_dims is None:
        n_dims = int(y_tensor.max() + 1)
    _, h, w = y_tensor.size()
    y_tensor = y_tensor.type(torch.LongTensor).view(-1, 1)
    y_one_hot = torch.zeros(y_tensor.size()[0], n_dims).scatter_(1, y_tensor, 1)
    y_one_hot = y_one_hot.view(h, w, n_dims)
    return y_one_hot.permute(2, 0, 1).unsqueeze(0)


def extract_feature(model, frame, return_h_w=False):
    out = model.get_intermediate_layers(frame.unsqueeze(0), n=1)[0]
    out = out[:, 1:, :]
    h, w = int(frame.shape[1] / model.patch_size), int(frame.shape[2] / model.patch_size)
    dim = out.shape[-1]
    out = out[0].reshape(h, w, dim)
    out = out.reshape(-1, dim)
    if return_h_w:
        return out, h, w
    return out


def restrict_neighborhood(h, w, size_mask_neighborhood):
    mask = torch.zeros(h, w, h, w)
    for i in range(h):
        for j in range(w):
            for p in range(2 * size_mask_neighborhood + 1):
                for q in range(2 * size_mask_neighborhood + 1):
                    if i - size_mask_neighborhood + p < 0 or i - size_mask_neighborhood + p >= h:
                        continue
                    if j - size_mask_neighborhood + q < 0 or j - size_mask_neighborhood + q >= w:
                        continue
                    mask[i, j, i - size_mask_neighborhood + p, j - size_mask_neighborhood + q] = 1
    return mask.reshape(h * w, h * w)


def norm_mask(mask):
    c, h, w = mask.size()
    for cnt in range(c):
        mask_cnt = mask[cnt, :, :]
        if mask_cnt.max() > 0:
            mask_cnt = mask_cnt - mask_cnt.min()
            mask_cnt = mask_cnt / mask_cnt.max()
            mask[cnt, :, :] = mask_cnt
    return mask


def label_propagation(
    model, frame_tar, list_frame_feats, list_segs, mask_neighborhood=None, size_mask_neighborhood=12, topk=5
):
    feat_tar, h, w = extract_feature(model, frame_tar, return_h_w=True)
    return_feat_tar = feat_tar.T

    ncontext = len(list_frame_feats)
    feat_sources = torch.stack(list_frame_feats)

    feat_tar = F.normalize(feat_tar, dim=1, p=2)
    feat_sources = F.normalize(feat_sources, dim=1, p=2)

    feat_tar = feat_tar.unsqueeze(0).repeat(ncontext, 1, 1)
    aff = torch.exp(torch.bmm(feat_tar, feat_sources) / 0.1)

    if size_mask_neighborhood > 0:
        if mask_neighborhood is None:
            mask_neighborhood = restrict_neighborhood(h, w, size_mask_neighborhood).to(aff.device)
            mask_neighborhood = mask_neighborhood.unsqueeze(0).repeat(ncontext, 1, 1)
        aff *= mask_neighborhood

    aff = aff.transpose(2, 1).reshape(-1, h * w)
    tk_val, _ = torch.topk(aff, dim=0, k=topk)
    tk_val_min, _ = torch.min(tk_val, dim=0)
    aff[aff < tk_val_min] = 0

    aff = aff / torch.sum(aff, keepdim=True, axis=0)

    segs = torch.cat(list_segs)
    nmb_context, C, h, w = segs.shape
    segs = segs.reshape(nmb_context, C, -1).transpose(2, 1).reshape(-1, C).T
    seg_tar = torch.mm(segs, aff)
    seg_tar = seg_tar.reshape(1, C, h, w)
    return seg_tar, return_feat_tar, mask_neighborhood


@torch.no_grad()
def segment_sequence(
    model,
    frame_list: Sequence[str | os.PathLike[str]],
    first_annotation,
    n_last_frames=7,
    size_mask_neighborhood=12,
    topk=5,
    mask_neighborhood=None,
):
    """The reference's `eval_video_tracking_davis`, returning the label maps (frame 0 = GT) instead of
    writing them. Also returns the soft masks at patch resolution, for finer comparisons."""
    first_seg, seg_ori = read_seg(first_annotation, model.patch_size)
    recent: list[tuple[torch.Tensor, torch.Tensor]] = []
    frame1, ori_h, ori_w = read_frame(frame_list[0])
    frame1_feat = extract_feature(model, frame1).T
    outputs = [np.array(seg_ori)]
    soft_masks = []
    for cnt in range(1, len(frame_list)):
        frame_tar = read_frame(frame_list[cnt])[0]
        used_frame_feats = [frame1_feat] + [pair[0] for pair in recent]
        used_segs = [first_seg] + [pair[1] for pair in recent]
        frame_tar_avg, feat_tar, mask_neighborhood = label_propagation(
            model, frame_tar, used_frame_feats, used_segs, mask_neighborhood, size_mask_neighborhood, topk
        )
        if len(recent) == n_last_frames:
            recent.pop(0)
        recent.append((feat_tar, frame_tar_avg.clone()))
        soft_masks.append(frame_tar_avg[0].clone())
        frame_tar_avg = F.interpolate(
            frame_tar_avg,
            scale_factor=model.patch_size,
            mode="bilinear",
            align_corners=False,
            recompute_scale_factor=False,
        )[0]
        frame_tar_avg = norm_mask(frame_tar_avg)
        _, frame_tar_seg = torch.max(frame_tar_avg, dim=0)
        frame_tar_seg = np.array(frame_tar_seg.squeeze().cpu(), dtype=np.uint8)
        frame_tar_seg = np.array(Image.fromarray(frame_tar_seg).resize((ori_w, ori_h), 0))
        outputs.append(frame_tar_seg)
    return outputs, soft_masks
