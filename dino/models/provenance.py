"""Where a backbone's weights came from: the typed record :func:`dino.checkpoint.load_backbone` attaches.

Import-light (no torch, nothing else from ``dino``): :class:`~dino.models.vision_transformer.VisionTransformer`
declares the attribute, and the hub and the loading front fill it in, without an import going back up.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WeightsProvenance"]


@dataclass(frozen=True)
class WeightsProvenance:
    """The weights a backbone was loaded from, as index manifests and results files record them.

    It describes the weights as loaded: a model whose weights change afterwards (training) keeps it.

    Attributes:
        source: The weights as named for loading again: a named source (``dino_vits16``, ``random:vit_tiny/16``,
            ``default`` resolved) or the absolute path of a file or Hugging Face folder.
        checkpoint_key: The network asked for in a full checkpoint (``teacher`` / ``student``); sources holding
            a single backbone ignore it.
        sha256: Hex SHA-256 of the loaded weights (:func:`dino.checksums.state_dict_sha256`), computed once;
            :func:`dino.checkpoint.weights_sha256` reuses it while the model's weights are unchanged.
        description: Where the weights come from, in one line for users (:func:`dino.hub.releases.weights_provenance`).
    """

    source: str
    checkpoint_key: str
    sha256: str
    description: str
