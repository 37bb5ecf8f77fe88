"""Every key layout DINO-family backbones come in, turned into the official one, and the architecture it implies.

Layouts (SPEC §7, §21):

* **official** DINO and DINOv2 backbone files (``cls_token``, ``pos_embed``, ``blocks.<i>.…``), including DINOv2
  training checkpoints saved with block chunks (``blocks.<chunk>.<i>.…``) and ``mask_token`` / ``register_tokens``;
* **timm** ViT state dicts: the DINO ones share the official keys; DINOv2 ``reg4`` models hold ``reg_token`` and a
  position grid without the [CLS] entry (timm folds that entry into ``cls_token``), and timm's ViT-g names its
  SwiGLU ``mlp.fc1`` / ``mlp.fc2``;
* **Hugging Face** ``ViTModel`` (the DINO v1 checkpoints published there), ``Dinov2Model`` and
  ``Dinov2WithRegistersModel``: separate ``query`` / ``key`` / ``value`` projections, ``layer_scale<k>.lambda1``,
  ``embeddings.*``; a model folder holds ``config.json`` beside ``model.safetensors`` or ``pytorch_model.bin``.

Each source keeps its own position-embedding convention (SPEC §21): the official files and timm's DINO v1
files resample the DINO way (``reference``); DINOv2 ``_reg`` and timm's ``reg4`` files with antialias
(``exact_antialias``); Hugging Face's ``Dinov2Model`` and ``ViTModel`` to the exact size (``exact``), its
``Dinov2WithRegistersModel`` with antialias.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from typing_extensions import Unpack

from dino.models.architectures import ARCHITECTURES
from dino.models.vision_transformer import PosEmbedInterpolation, VisionTransformer, ViTOptions, build_vit

__all__ = [
    "BackboneConfig",
    "HF_CONFIG",
    "HF_WEIGHT_FILES",
    "LayoutError",
    "infer_backbone_config",
    "is_hugging_face_model",
    "locate_hugging_face_model",
    "read_safetensors",
    "resnet_depth",
    "resnet_state_dict",
    "to_official_layout",
]

HF_CONFIG = "config.json"
# The files a Hugging Face model folder keeps its weights in, in the order they are preferred.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# `model_type` of the Hugging Face configs that are DINO-family ViTs.
HF_MODEL_TYPES = ("vit", "dinov2", "dinov2_with_registers")
# Hugging Face names inside `encoder.layer.<i>.` and the official names they become (q/k/v handled apart).
HF_BLOCK_NAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}
HF_EMBEDDING_NAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")


class LayoutError(ValueError):
    """Weights whose layout is not a DINO-family ViT; the message names the source and what was found."""


@dataclass(frozen=True)
class BackboneConfig:
    """What builds the ViT that a state dict in the official layout fits.

    Attributes:
        arch: Name in :data:`~dino.models.vision_transformer.ARCHITECTURES` (by width).
        patch_size: Patch size.
        img_size: Training resolution implied by the position grid (grid side × patch size).
        depth: Number of blocks.
        num_heads: Heads (from the table unless the source says otherwise, e.g. a Hugging Face config).
        layer_scale: LayerScale in every block (DINOv2).
        num_register_tokens: Register tokens (DINOv2 ``_reg``).
        ffn: ``mlp`` or ``swiglu``.
        mask_token: The weights hold DINOv2's ``mask_token``.
        pos_embed_interpolation: The source's convention for resampling positions.
    """

    arch: str
    patch_size: int
    img_size: int
    depth: int
    num_heads: int
    layer_scale: bool = False
    num_register_tokens: int = 0
    ffn: str = "mlp"
    mask_token: bool = False
    pos_embed_interpolation: PosEmbedInterpolation = "reference"

    def build(self, **overrides: Unpack[ViTOptions]) -> VisionTransformer:
        """The model (random weights) that a state dict of this configuration loads into strictly; `overrides`
        replace the configuration's constructor arguments (e.g. ``pos_embed_interpolation``)."""
        options: ViTOptions = {
            "img_size": self.img_size,
            "depth": self.depth,
            "num_heads": self.num_heads,
            # LayerScale's learned values come with the weights; 1.0 is DINOv2's inference-time init.
            "layer_scale_init": 1.0 if self.layer_scale else None,
            "num_register_tokens": self.num_register_tokens,
            "ffn": self.ffn,
            "mask_token": self.mask_token,
            "pos_embed_interpolation": self.pos_embed_interpolation,
        }
        return build_vit(self.arch, self.patch_size, **{**options, **overrides})


# ---------------------------------------------------------------------------- layouts
def to_official_layout(
    state: Mapping[str, Tensor], source: str = "<state dict>"
) -> tuple[dict[str, Tensor], PosEmbedInterpolation | None]:
    """The state dict in the official layout, and the position convention the layout implies (None: official).

    Accepts the official, timm and Hugging Face layouts (module docstring); prefixes and heads must already be
    stripped (:func:`dino.checkpoint.backbone_state_dict` does it).
    """
    if any(key.startswith(("embeddings.", "encoder.layer.")) for key in state):
        with_registers = "embeddings.register_tokens" in state
        return _from_hugging_face(state, source), "exact_antialias" if with_registers else "exact"
    official = {CHUNKED_BLOCK.sub(r"blocks.\1.", key): value for key, value in state.items()}
    convention: PosEmbedInterpolation | None = None
    if "reg_token" in official:
        official, convention = _from_timm_registers(official, source), "exact_antialias"
    return _swiglu_names(official), convention


def _from_timm_registers(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """timm's `no_embed_class` layout: [CLS] and registers carry no position; timm folded [CLS]'s into the token."""
    state = dict(state)
    positions = state.pop("pos_embed", None)
    if positions is None:
        raise LayoutError(f"{source}: timm register layout (reg_token) without pos_embed")
    side = int(round(positions.shape[1] ** 0.5))
    if side * side != positions.shape[1]:
        raise LayoutError(
            f"{source}: timm register layout expects a square position grid without [CLS], got {positions.shape[1]}"
        )
    # A zero [CLS] position with the folded token is the same sum the official model computes.
    state["pos_embed"] = torch.cat((positions.new_zeros(1, 1, positions.shape[-1]), positions), dim=1)
    state["register_tokens"] = state.pop("reg_token")
    return state


def _swiglu_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm's packed SwiGLU (`fc1` out = 2 × `fc2` in) under DINOv2's names `w12` / `w3`."""
    first = state.get("blocks.0.mlp.fc1.weight")
    second = state.get("blocks.0.mlp.fc2.weight")
    if first is None or second is None or first.shape[0] != 2 * second.shape[1]:
        return state
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"\.mlp\.fc1\.", ".mlp.w12.", key)
        renamed[re.sub(r"\.mlp\.fc2\.", ".mlp.w3.", key)] = value
    return renamed


def _from_hugging_face(state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if key in HF_EMBEDDING_NAMES:
            name = HF_EMBEDDING_NAMES[key]
            # ViTModel's optional mask token is (1, 1, D) and used only for masked image modelling.
            if name == "mask_token" and value.ndim != 2:
                continue
            out[name] = value
            continue
        if key.startswith("pooler."):
            continue
        match = HF_LAYER.match(key)
        if match is None:
            raise LayoutError(f"{source}: unexpected Hugging Face key {key!r}")
        index, name, kind = int(match.group(1)), match.group(2), match.group(3)
        projection = name.removeprefix("attention.attention.")
        if projection in ("query", "key", "value") and name.startswith("attention.attention."):
            qkv.setdefault((index, kind), {})[projection] = value
        elif f"{name}.{kind}" in HF_BLOCK_NAMES:  # layer_scale<k>.lambda1
            out[f"blocks.{index}.{HF_BLOCK_NAMES[f'{name}.{kind}']}"] = value
        elif name in HF_BLOCK_NAMES:
            out[f"blocks.{index}.{HF_BLOCK_NAMES[name]}.{kind}"] = value
        else:
            raise LayoutError(f"{source}: unexpected Hugging Face key {key!r}")
    for (index, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise LayoutError(f"{source}: layer {index} has only {sorted(parts)} of query/key/value {kind}")
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


# ---------------------------------------------------------------------------- architecture
def infer_backbone_config(
    state: Mapping[str, Tensor],
    source: str = "<state dict>",
    num_heads: int | None = None,
    pos_embed_interpolation: PosEmbedInterpolation | None = None,
) -> BackboneConfig:
    """The :class:`BackboneConfig` of a state dict in the official layout, read from its keys and shapes.

    The convention defaults to the official releases': ``reference`` for plain models, ``exact_antialias`` for
    models with registers (DINOv2's `_reg` hub models).
    """
    try:
        embed_dim = state["cls_token"].shape[-1]
        patch_size = state["patch_embed.proj.weight"].shape[-1]
        num_positions = state["pos_embed"].shape[1] - 1
    except KeyError as missing:
        found = sorted(state)[:6]
        raise LayoutError(
            f"{source}: missing key {missing} needed to infer the architecture (found {found} …)"
        ) from None
    arch = next((name for name, cfg in ARCHITECTURES.items() if cfg["embed_dim"] == embed_dim), None)
    if arch is None:
        raise LayoutError(f"{source}: embedding dimension {embed_dim} matches none of {sorted(ARCHITECTURES)}")
    side = int(round(num_positions**0.5))
    if side * side != num_positions:
        raise LayoutError(f"{source}: pos_embed has {num_positions} patch positions, not a square grid")
    blocks = {int(match.group(1)) for key in state if (match := BLOCK_INDEX.match(key))}
    if not blocks or blocks != set(range(len(blocks))):
        raise LayoutError(f"{source}: blocks {sorted(blocks)[:8]} are not numbered 0..depth-1")
    registers = state.get("register_tokens")
    num_register_tokens = int(registers.shape[1]) if registers is not None else 0
    if pos_embed_interpolation is None:
        pos_embed_interpolation = "exact_antialias" if num_register_tokens else "reference"
    return BackboneConfig(
        arch=arch,
        patch_size=int(patch_size),
        img_size=side * int(patch_size),
        depth=len(blocks),
        num_heads=num_heads or ARCHITECTURES[arch]["num_heads"],
        layer_scale="blocks.0.ls1.gamma" in state,
        num_register_tokens=num_register_tokens,
        ffn="swiglu" if "blocks.0.mlp.w12.weight" in state else "mlp",
        mask_token="mask_token" in state,
        pos_embed_interpolation=pos_embed_interpolation,
    )


# ---------------------------------------------------------------------------- Hugging Face folders
def is_hugging_face_model(path: str | os.PathLike[str]) -> bool:
    """A Hugging Face model folder (with `config.json`), or a `.safetensors` file."""
    path = Path(path)
    if path.is_dir():
        return (path / HF_CONFIG).is_file()
    return path.suffix == ".safetensors" or (path.name in HF_WEIGHT_FILES and (path.parent / HF_CONFIG).is_file())


def locate_hugging_face_model(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The weights file and `config.json` (empty when absent) of a Hugging Face model folder or weights file.

    Only locates and checks: `model.safetensors` is read by :func:`read_safetensors`, `pytorch_model.bin` by the
    loading front (:func:`dino.checkpoint.load_backbone`), which owns the rules for unpickling files.

    Raises:
        LayoutError: No weights file, an unreadable `config.json`, or a `model_type` that is no DINO-family ViT.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights = path if path.is_file() else next((folder / n for n in HF_WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise LayoutError(f"{path}: a Hugging Face model folder without {' or '.join(HF_WEIGHT_FILES)}")
    config: dict[str, Any] = {}
    if (folder / HF_CONFIG).is_file():
        try:
            config = json.loads((folder / HF_CONFIG).read_text())
        except (OSError, ValueError) as error:
            raise LayoutError(f"{folder / HF_CONFIG}: unreadable config ({error})") from error
        model_type = config.get("model_type")
        if model_type not in HF_MODEL_TYPES:
            raise LayoutError(f"{folder / HF_CONFIG}: model_type {model_type!r} is not one of {sorted(HF_MODEL_TYPES)}")
        if config.get("hidden_act", "gelu") != "gelu" or not config.get("qkv_bias", True):
            raise LayoutError(f"{folder / HF_CONFIG}: only GELU MLPs with a qkv bias are DINO-family ViTs")
    return weights, config


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a `.safetensors` file, on CPU (the format holds no code, so nothing can run)."""
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise LayoutError(
            f"{path}: reading .safetensors needs the `safetensors` package (pip install safetensors)"
        ) from error
    try:
        return load_file(path, device="cpu")
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise LayoutError(f"{path}: not a readable safetensors file ({type(error).__name__}: {error})") from error


# ---------------------------------------------------------------------------- ResNet-50 (SPEC §23, §24)
# Where each layout keeps the backbone: DenseCL's training checkpoints hold the query encoder as `encoder_q.0`
# (its neck is `encoder_q.1`, the key encoder `encoder_k`); DINO's full checkpoints wrap it as `backbone.`, the
# student also in DDP's `module.`.
RESNET_WRAPPERS = ("encoder_q.0.", "module.backbone.", "backbone.", "module.")
# The top-level modules of torchvision's ResNet backbone: every key of its state dict starts with one of these.
RESNET_LAYOUT_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


def resnet_state_dict(checkpoint: Mapping[str, Any], checkpoint_key: str, source: str) -> dict[str, Tensor]:
    """The ResNet backbone of a checkpoint, in torchvision's layout without ``fc`` (what
    :class:`dino.models.resnet.ResNetBackbone` loads).

    Reads DINO's backbone-only release and full checkpoints (``checkpoint[checkpoint_key]``, ``teacher`` or
    ``student``; ``head.*`` dropped), DenseCL's releases (``{"state_dict": …, "author": "DenseCL"}``) and training
    checkpoints (the query encoder ``encoder_q.0``; neck, key encoder and queues dropped), and torchvision and timm
    ``resnet*`` state dicts (``fc.*`` dropped).

    Raises:
        LayoutError: No ResNet backbone keys were found.
    """
    state: Mapping[str, Any] = checkpoint
    for key in (checkpoint_key, "state_dict", "model"):
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    tensors = {key: value for key, value in state.items() if isinstance(value, Tensor)}
    for wrapper in RESNET_WRAPPERS:
        wrapped = {key[len(wrapper) :]: value for key, value in tensors.items() if key.startswith(wrapper)}
        if any(key.startswith(RESNET_LAYOUT_PREFIXES) for key in wrapped):
            tensors = wrapped
            break
    backbone = {key: value for key, value in tensors.items() if key.startswith(RESNET_LAYOUT_PREFIXES)}
    if not backbone:
        shown = sorted(map(str, state))[:8]
        raise LayoutError(f"{source}: no ResNet backbone found (conv1, bn1, layer1-4 keys); keys include {shown}")
    return backbone


def resnet_depth(state: Mapping[str, Tensor], source: str) -> int:
    """The depth of the torchvision ResNet whose backbone keys `state` holds (18, 34, 50, 101 or 152).

    Bottleneck blocks have a ``conv3``, basic blocks do not; the blocks per stage tell the depths of one kind apart.

    Raises:
        LayoutError: The blocks match none of torchvision's ResNets.
    """
    bottleneck = "layer1.0.conv3.weight" in state
    blocks = tuple(
        len({key.split(".")[1] for key in state if key.startswith(f"layer{stage}.")}) for stage in (1, 2, 3, 4)
    )
    depths = {
        (False, (2, 2, 2, 2)): 18,
        (False, (3, 4, 6, 3)): 34,
        (True, (3, 4, 6, 3)): 50,
        (True, (3, 4, 23, 3)): 101,
        (True, (3, 8, 36, 3)): 152,
    }
    depth = depths.get((bottleneck, blocks))
    if depth is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise LayoutError(
            f"{source}: a ResNet with {kind} blocks {list(blocks)} per stage is none of torchvision's "
            "ResNet-18/34/50/101/152"
        )
    return depth
