"""Typed training configuration: defaults = the reference ViT-S/16 recipe, presets, YAML files and
``key=value`` overrides (SPEC §3–§6, §16 "a single config system").

Resolution order: dataclass defaults -> preset (``dino/configs/<name>.yaml``) -> ``--config`` YAML file ->
command-line ``key=value`` overrides. Keys are dotted (``optim.lr=1e-3``); a bare field name
(``lr=1e-3``) is accepted when it names exactly one field.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dino.atomic import atomic_write
from dino.models.architectures import ARCHITECTURES, RESNET_ARCHITECTURES

__all__ = [
    "METHODS",
    "TRAINABLE_ARCHS",
    "CropsConfig",
    "DenseCLConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "available_presets",
    "config_to_dict",
    "load_config",
    "save_config",
]

PRESET_PACKAGE = "dino.configs"
# The backbones `dino train` can build: the ViTs of the DINO recipes and torchvision's ResNets (SPEC §24).
TRAINABLE_ARCHS: tuple[str, ...] = (
    *(name for name in ARCHITECTURES if name in ("vit_tiny", "vit_small", "vit_base")),
    *RESNET_ARCHITECTURES,
)
# The self-supervised methods the trainer runs (``run.method``): DINO (SPEC §3-§7, §24) and DenseCL (SPEC §23).
METHODS: tuple[str, ...] = ("dino", "densecl")


@dataclass
class ModelConfig:
    """Student/teacher networks (SPEC §1–§2). With a ResNet (`arch` ``resnet18`` … ``resnet152``, SPEC §24) the
    head's input is the pooled feature (2048-d, or 512-d for ResNet-18/34) and `patch_size` / `drop_path_rate`,
    which only a ViT has, are ignored."""

    arch: str = "vit_small"
    patch_size: int = 16
    out_dim: int = 65536
    norm_last_layer: bool = True
    use_bn_in_head: bool = False
    head_nlayers: int = 3
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    drop_path_rate: float = 0.1


@dataclass
class CropsConfig:
    """Multi-crop augmentation (SPEC §4)."""

    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    local_crops_number: int = 8
    global_crops_size: int = 224
    local_crops_size: int = 96


@dataclass
class LossConfig:
    """DINO loss temperatures and centering (SPEC §3). The defaults are the reference code's; the paper's
    ViT-S/16 "boost" recipe (preset ``vit_small16_boost``) warms the teacher temperature 0.04 -> 0.07."""

    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9


@dataclass
class OptimConfig:
    """Optimiser and schedules (SPEC §5). `lr` is for a total batch of 256 and is scaled linearly."""

    optimizer: str = "adamw"
    epochs: int = 100
    batch_size_per_gpu: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    clip_grad: float = 3.0
    clip_mode: str = "per_param"
    freeze_last_layer: int = 1


@dataclass
class DenseCLConfig:
    """DenseCL (SPEC §23; WXinlong/DenseCL ``configs/selfsup/densecl/densecl_imagenet_200ep.py``), read when
    ``run.method=densecl``. The backbone is ``model.arch`` (a ResNet); the optimiser and the epochs are ``optim``'s.

    `loss_lambda` weighs the dense loss, ``(1 - λ)·L_global + λ·L_dense``; λ is 0 for the first `warmup_iters`
    global steps. `bn_splits`: BatchNorm runs over that many sub-batches of each process's batch (the key batch
    shuffled first), so that one process computes the statistics `bn_splits` GPUs would (shuffle BN without DDP);
    0 lets :class:`dino.train.densecl.DenseCL` choose (1 under torchrun, as the reference; 2 in one process).
    `queue_len` must be a multiple of the global batch, checked at start-up.
    """

    hid_dim: int = 2048
    feat_dim: int = 128
    queue_len: int = 65536
    momentum: float = 0.999
    temperature: float = 0.2
    loss_lambda: float = 0.5
    warmup_iters: int = 1000
    bn_splits: int = 0
    crop_size: int = 224
    crop_scale: tuple[float, float] = (0.2, 1.0)


@dataclass
class RunConfig:
    """Data, output, precision, logging and checkpointing."""

    method: str = "dino"
    data_path: list[str] = field(default_factory=list)
    output_dir: str = "dino_output"
    seed: int = 0
    num_workers: int = 10
    device: str = "auto"
    precision: str = "auto"
    saveckp_freq: int = 20
    checkpoint_every_steps: int = 0
    max_steps: int = 0
    log_every: int = 10
    tensorboard: bool = False
    progress: bool = True


# Numeric fields and the values the trainer can use (inclusive bounds); every number must also be finite.
_RANGES: dict[str, tuple[float, float]] = {
    "model.patch_size": (1, math.inf),
    "model.out_dim": (1, math.inf),
    "model.head_nlayers": (1, math.inf),
    "model.head_hidden_dim": (1, math.inf),
    "model.head_bottleneck_dim": (1, math.inf),
    "model.drop_path_rate": (0, 1),
    "crops.local_crops_number": (0, math.inf),
    "crops.global_crops_size": (1, math.inf),
    "crops.local_crops_size": (1, math.inf),
    "loss.warmup_teacher_temp": (0, math.inf),
    "loss.teacher_temp": (0, math.inf),
    "loss.warmup_teacher_temp_epochs": (0, math.inf),
    "loss.student_temp": (0, math.inf),
    "loss.center_momentum": (0, 1),
    "optim.epochs": (1, math.inf),
    "optim.lr": (0, math.inf),
    "optim.min_lr": (0, math.inf),
    "optim.warmup_epochs": (0, math.inf),
    "optim.weight_decay": (0, math.inf),
    "optim.weight_decay_end": (0, math.inf),
    "optim.momentum_teacher": (0, 1),
    "optim.clip_grad": (0, math.inf),
    "optim.freeze_last_layer": (0, math.inf),
    "densecl.hid_dim": (1, math.inf),
    "densecl.feat_dim": (1, math.inf),
    "densecl.queue_len": (1, math.inf),
    "densecl.momentum": (0, 1),
    "densecl.temperature": (0, math.inf),
    "densecl.loss_lambda": (0, 1),
    "densecl.warmup_iters": (0, math.inf),
    "densecl.bn_splits": (0, math.inf),
    "densecl.crop_size": (1, math.inf),
    "run.seed": (0, 2**32 - 1),
    "run.num_workers": (0, math.inf),
    "run.saveckp_freq": (0, math.inf),
    "run.checkpoint_every_steps": (0, math.inf),
    "run.max_steps": (0, math.inf),
    "run.log_every": (1, math.inf),
}
# Temperatures divide the logits: 0 is not a temperature.
_POSITIVE = frozenset({"loss.warmup_teacher_temp", "loss.teacher_temp", "loss.student_temp", "densecl.temperature"})


def _out_of_range(key: str, value: float) -> str | None:
    """Why `value` cannot be `key`, or None when it can."""
    low, high = _RANGES[key]
    if key in _POSITIVE:
        return None if math.isfinite(value) and value > 0 else "must be a number above 0"
    if math.isfinite(value) and low <= value <= high:
        return None
    return f"must be at least {low}" if high == math.inf else f"must lie in [{low}, {high}]"


@dataclass
class TrainConfig:
    """Everything `dino train` needs; see the section classes for the fields."""

    model: ModelConfig = field(default_factory=ModelConfig)
    crops: CropsConfig = field(default_factory=CropsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    densecl: DenseCLConfig = field(default_factory=DenseCLConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        """Raise ValueError for values the trainer cannot use."""
        choices = {
            "run.method": (self.run.method, METHODS),
            "model.arch": (self.model.arch, TRAINABLE_ARCHS),
            "optim.optimizer": (self.optim.optimizer, ("adamw", "sgd")),
            "optim.clip_mode": (self.optim.clip_mode, ("per_param", "global")),
            "run.precision": (self.run.precision, ("auto", "fp32", "bf16", "fp16")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"config {key}={value!r}: choose one of {', '.join(allowed)}")
        for key in _RANGES:
            section, _, name = key.partition(".")
            value = getattr(getattr(self, section), name)
            problem = _out_of_range(key, value)
            if problem:
                raise ValueError(f"config {key}={value!r}: {problem}")
        for key in ("crops.global_crops_scale", "crops.local_crops_scale", "densecl.crop_scale"):
            section, _, name = key.partition(".")
            low, high = getattr(getattr(self, section), name)
            if not 0 < low <= high <= 1:
                raise ValueError(f"config {key}=({low}, {high}): need 0 < min <= max <= 1")
        if self.optim.warmup_epochs > self.optim.epochs:
            raise ValueError(f"optim.warmup_epochs={self.optim.warmup_epochs} exceeds optim.epochs={self.optim.epochs}")
        if self.loss.warmup_teacher_temp_epochs > self.optim.epochs:
            raise ValueError("loss.warmup_teacher_temp_epochs exceeds optim.epochs")
        if self.optim.batch_size_per_gpu < 1:
            raise ValueError("optim.batch_size_per_gpu must be at least 1")
        if self.run.method == "densecl" and self.model.arch not in RESNET_ARCHITECTURES:
            raise ValueError(
                f"config model.arch={self.model.arch!r}: DenseCL trains a ResNet; choose one of "
                f"{', '.join(RESNET_ARCHITECTURES)}"
            )


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as plain YAML/JSON data (tuples become lists), safe for ``torch.load(weights_only=True)``."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config {key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"config {key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"config {key}: expected a number, got {value!r}")
    if annotation is str:
        return str(value)
    if origin is tuple:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        arguments = typing.get_args(annotation)
        if len(items) != len(arguments):
            raise ValueError(f"config {key}: expected {len(arguments)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(items, arguments, strict=True))
    if origin is list:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        (argument,) = typing.get_args(annotation)
        return [_coerce(v, argument, key) for v in items]
    raise TypeError(f"config {key}: unsupported field type {annotation!r}")


def _field_types(section: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(section))


def _set(config: TrainConfig, key: str, value: Any) -> None:
    section_name, _, name = key.partition(".")
    sections = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if not name:
        owners = [s for s, section in sections.items() if section_name in _field_types(section)]
        if len(owners) != 1:
            hint = "no such field" if not owners else f"ambiguous, write one of {[f'{o}.{key}' for o in owners]}"
            raise ValueError(f"config key {key!r}: {hint}")
        section_name, name = owners[0], key
    if section_name not in sections:
        raise ValueError(f"config key {key!r}: unknown section {section_name!r} (sections: {', '.join(sections)})")
    section = sections[section_name]
    types = _field_types(section)
    if name not in types:
        raise ValueError(f"config key {key!r}: {section_name} has no field {name!r} (fields: {', '.join(types)})")
    setattr(section, name, _coerce(value, types[name], key))


def _apply_mapping(config: TrainConfig, data: Any, source: str) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of sections to fields")
    for section, fields in data.items():
        if isinstance(fields, dict):
            for name, value in fields.items():
                _set(config, f"{section}.{name}", value)
        else:
            _set(config, str(section), fields)


def apply_overrides(config: TrainConfig, overrides: list[str]) -> None:
    """Apply ``key=value`` strings; values are parsed as YAML (``1e-3``, ``true``, ``[0.4, 1.0]``)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected key=value, e.g. optim.lr=1e-3")
        value = yaml.safe_load(text) if text else ""
        # YAML reads "1e-3" as a string (it wants "1.0e-3"); accept it as a number anyway.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                pass
        _set(config, key.strip(), value)


def available_presets() -> list[str]:
    """Names of the presets shipped in ``dino/configs``."""
    return sorted(
        p.name[: -len(".yaml")] for p in resources.files(PRESET_PACKAGE).iterdir() if p.name.endswith(".yaml")
    )


def _read_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())  # PyYAML's messages span several lines
        raise ValueError(f"{source}: not valid YAML ({reason})") from None


def load_config(
    preset: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
) -> TrainConfig:
    """Defaults, then a preset, then a YAML file, then ``key=value`` overrides; validated."""
    config = TrainConfig()
    if preset:
        if preset not in available_presets():
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(available_presets())}")
        text = resources.files(PRESET_PACKAGE).joinpath(f"{preset}.yaml").read_text()
        _apply_mapping(config, _read_yaml(text, f"preset {preset}"), f"preset {preset}")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        _apply_mapping(config, _read_yaml(path.read_text(), str(path)), str(path))
    apply_overrides(config, overrides or [])
    config.validate()
    return config


def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML, atomically."""
    with atomic_write(path, "w") as handle:
        yaml.safe_dump(config_to_dict(config), handle, sort_keys=False)
