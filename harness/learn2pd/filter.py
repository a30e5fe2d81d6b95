"""Learn2PD's filter f_theta: a tiny MLP from the current block's confidences to one logit per position,
read as "this position's prediction is already final"."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

# Inputs the filter can see; the paper uses confidences only. `repeat` and `outranked` read the block's
# tokens: on tasks whose answers cannot repeat a token (any-order lists), a low-confidence prediction that no
# other position claims is usually final, and one that another position claims more confidently is not.
FEATURES = ("confidence", "position", "step", "repeat", "outranked")
TOKEN_FEATURES = ("repeat", "outranked")
NAMED_FILTERS = {"tiny": Path(__file__).resolve().parents[1] / "assets" / "tiny-llada" / "filter.safetensors"}


def resolve_filter(name_or_path: str | Path) -> Path:
    return NAMED_FILTERS.get(str(name_or_path), Path(name_or_path).expanduser())


def token_flags(prediction: Tensor, tokens: Tensor, confidence: Tensor, masked: Tensor, eos_id: int) -> dict:
    """Per block position, over the block as it would read (decoded tokens, predictions where masked):
    `repeat`, another position holds or predicts the same token; `outranked`, one of those is decoded or
    strictly more confident. EOS never counts: padding repeats by design. Torch tensors or numpy arrays."""
    where = np.where if isinstance(masked, np.ndarray) else torch.where
    proposal = where(masked, prediction, tokens)
    strength = where(masked, confidence, 2.0)  # a decoded token outranks any prediction
    counted = proposal != eos_id
    same = proposal[:, :, None] == proposal[:, None, :]  # [n, i, j]: j holds or predicts i's token
    repeat = (same.sum(-1) > 1) & counted
    same &= strength[:, None, :] > strength[:, :, None]  # ... and j outranks i
    return {"repeat": repeat, "outranked": same.any(-1) & counted}


class _StepInputs(dict):
    """(batch, step) -> [batch, 2] rows (1, step): the first layer's constant and step inputs, made once each."""

    def __init__(self, device: torch.device | None):  # None: numpy
        super().__init__()
        self.device = device

    def __missing__(self, key: tuple[int, int]):
        n, step = key
        if self.device is None:
            rows = np.broadcast_to(np.array([1.0, step], np.float32), (n, 2))
        else:
            rows = torch.tensor([1.0, step], device=self.device).expand(n, 2)
        self[key] = rows
        return rows


class _Fold(NamedTuple):
    """The decoding copy of a filter, so that a step is matmuls and ReLUs only: each layer's weight transposed,
    its bias as a last input row read by a constant input of 1 (the first layer's inputs end with (1, step), each
    hidden layer passes a unit fixed at 1 on), the constant position inputs folded into the first bias; and the
    ops that apply them: numpy on the CPU (`np.dot` beats `@` on tiny matrices), torch elsewhere."""
    weights: list
    step_inputs: _StepInputs
    dot: Callable
    relu_: Callable

    @property
    def as_numpy(self) -> bool:  # numpy arrays (the filter is on the CPU), else tensors on the filter's device
        return self.step_inputs.device is None


_ZERO = np.float32(0)  # np.maximum would convert a Python 0 on every call


def _relu_numpy_(h: np.ndarray) -> None:
    np.maximum(h, _ZERO, out=h)


class Filter(nn.Module):
    """`depth` linear layers with ReLU between them; layer i is named `linear{i}` so the authors' released
    `layer_2_flan.pth` (linear1: 32->32, linear2: 32->32) loads as is. Inputs, in FEATURES order: B
    confidences, plus B position indices, one step index, B `repeat` and B `outranked` flags when those
    features are switched on."""

    def __init__(self, block_length: int = 32, hidden: int | None = None, depth: int = 2,
                 features: tuple[str, ...] = ("confidence",)):
        super().__init__()
        unknown = set(features) - set(FEATURES)
        if unknown or "confidence" not in features:
            raise ValueError(f"filter features must include 'confidence' and come from {FEATURES}: {features}")
        self.block_length, self.depth = block_length, depth
        self.features = tuple(f for f in FEATURES if f in features)
        self.reads_tokens = any(f in TOKEN_FEATURES for f in self.features)
        self.per_position = [f for f in self.features if f not in ("position", "step")]  # vary per block
        self.hidden = hidden or block_length
        self.columns, start = {}, 0  # feature -> its slice of the first layer's inputs
        for name in self.features:
            width = 1 if name == "step" else block_length
            self.columns[name], start = slice(start, start + width), start + width
        widths = [start] + [self.hidden] * (depth - 1) + [block_length]
        for i in range(depth):
            self.add_module(f"linear{i + 1}", nn.Linear(widths[i], widths[i + 1]))

    def featurize(self, confidence: Tensor, step: int | Tensor = 0, flags: dict | None = None) -> Tensor:
        """[n, width <= B] confidences (+ `token_flags` when the filter reads tokens) -> [n, inputs]; a block
        shortened by EoTP is zero-padded to B."""
        n, width = confidence.shape
        B = self.block_length
        parts = []
        for name in self.features:
            if name == "position":
                parts.append(torch.arange(B, device=confidence.device).float().div(B).expand(n, -1))
            elif name == "step":
                parts.append(torch.as_tensor(step, device=confidence.device).float().reshape(-1, 1).expand(n, 1) / B)
            else:
                parts.append(nn.functional.pad(self._per_position(name, confidence, flags).float(), (0, B - width)))
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def _per_position(self, name: str, confidence: Tensor, flags: dict | None) -> Tensor:
        if name == "confidence":
            return confidence.float()
        if flags is None:
            raise ValueError(f"this filter reads the block's tokens ({name!r}); pass token_flags(...)")
        return flags[name]  # bool: torch.cat promotes it to float beside the confidences

    def forward(self, features: Tensor) -> Tensor:
        h = features
        for i in range(1, self.depth + 1):
            h = getattr(self, f"linear{i}")(h)
            if i < self.depth:
                h = torch.relu(h)
        return h

    def block_logits(self, confidence: Tensor, step: int | Tensor = 0, flags: dict | None = None) -> Tensor:
        """f(c) per block position, cropped back to the block's width."""
        return self(self.featurize(confidence, step, flags))[:, :confidence.shape[1]]

    def step_flags(self, prediction: Tensor, tokens: Tensor, confidence: Tensor, masked: Tensor, eos_id: int) -> dict:
        """`token_flags` of one decoding step, in the decoding copy's arrays (numpy views on the CPU)."""
        tensors = [prediction, tokens, confidence.float(), masked]
        if self._folded().as_numpy:
            tensors = [t.numpy() for t in tensors]
        return token_flags(*tensors, eos_id)

    def decode_logits(self, confidence: Tensor, step: int, prediction: Tensor | None = None,
                      tokens: Tensor | None = None, masked: Tensor | None = None, eos_id: int | None = None, *,
                      flags: dict | None = None) -> Tensor:
        """`block_logits` for one decoding step, on the decoding copy of the weights (`_Fold`); a filter that
        reads tokens computes the token flags here from the block, unless given the step's `step_flags`. On the
        CPU it runs in numpy on zero-copy views: at batch 1 a step is all per-call overhead, and numpy's is half
        of torch's."""
        fold = self._folded()
        computes_flags = self.reads_tokens and flags is None
        tensors = [confidence.float(), prediction, tokens, masked] if computes_flags else [confidence.float()]
        if fold.as_numpy:
            tensors = [t.numpy() for t in tensors]
        features = tensors[:1]
        if computes_flags:
            flags = token_flags(tensors[1], tensors[2], tensors[0], tensors[3], eos_id)
        if self.reads_tokens:
            features += [flags[name] for name in self.per_position[1:]]
        (n, width), B = features[0].shape, self.block_length
        constants = fold.step_inputs[n, step]
        if width == B:
            h = (np.concatenate if fold.as_numpy else torch.cat)(features + [constants], -1)  # bools promote to float
        else:  # an EoTP-shortened block: each feature's inputs zero-padded to B
            size = (n, len(features) * B + 2)
            h = np.zeros(size, np.float32) if fold.as_numpy else features[0].new_zeros(size)
            for i, feature in enumerate(features):
                h[:, i * B:i * B + width] = feature
            h[:, -2:] = constants
        h = fold.dot(h, fold.weights[0])
        for weight in fold.weights[1:]:
            fold.relu_(h)  # in place: at batch 1 each allocation is a visible share of a step
            h = fold.dot(h, weight)
        if width < B:
            h = h[:, :width]
        return torch.from_numpy(h) if fold.as_numpy else h

    def _folded(self) -> _Fold:
        """The decoding copy of the weights, rebuilt when they change or move."""
        params = self.__dict__.get("_params") or list(self.parameters())
        key = ([p._version for p in params], params[0].device)
        if self.__dict__.get("_fold_key") != key:
            self.__dict__["_params"] = params
            fold = self._fold_for_decoding(as_numpy=params[0].device.type == "cpu")
            self.__dict__["_fold_key"], self.__dict__["_fold"] = key, fold
        return self.__dict__["_fold"]

    def _fold_for_decoding(self, as_numpy: bool) -> _Fold:
        B, layers = self.block_length, [getattr(self, f"linear{i}") for i in range(1, self.depth + 1)]
        with torch.no_grad():
            first = layers[0].weight
            bias = layers[0].bias.clone()
            if "position" in self.features:
                bias += first[:, self.columns["position"]] @ (torch.arange(B, device=first.device).float() / B)
            step = first[:, self.columns["step"]].squeeze(1) / B if "step" in self.features else torch.zeros_like(bias)
            inputs = [first[:, self.columns[name]] for name in self.per_position] + [bias[:, None], step[:, None]]
            weights = [torch.cat(inputs, 1).t()]
            weights += [torch.cat([layer.weight.t(), layer.bias[None]]) for layer in layers[1:]]
            for i in range(len(weights) - 1):  # a hidden layer: one more output, fixed at 1 (ReLU keeps it)
                unit = torch.zeros(len(weights[i]), 1, device=first.device)
                unit[-1 if i else -2] = 1.0  # from the constant input of 1 (the first layer: before the step)
                weights[i] = torch.cat([weights[i], unit], 1)
        weights = [w.contiguous().numpy() if as_numpy else w.contiguous() for w in weights]
        ops = (np.dot, _relu_numpy_) if as_numpy else (torch.matmul, torch.relu_)
        return _Fold(weights, _StepInputs(None if as_numpy else first.device), *ops)

    def accept_probability(self, confidence: Tensor, step: int | Tensor = 0, flags: dict | None = None) -> Tensor:
        return torch.sigmoid(self.block_logits(confidence, step, flags))

    def metadata(self) -> dict:
        return {"block_length": self.block_length, "hidden": self.hidden, "depth": self.depth,
                "features": list(self.features)}


def save_filter(model: Filter, path: str | Path, **extra) -> Path:
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**model.metadata(), **extra}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"learn2pd_filter": json.dumps(meta)})
    return path


class FilterFileError(ValueError):
    """A filter file that does not read as a filter: one line naming the file."""


def load_filter(path: str | Path, device="cpu") -> Filter:
    """Load a filter saved by this package (.safetensors), a released Learn2PD state dict (.pth/.pt), or a
    shipped filter by name ("tiny"). A truncated, foreign or mis-shaped file is a `FilterFileError`."""
    path = resolve_filter(path)
    if not path.is_file():
        raise FileNotFoundError(f"filter file not found: {path}")
    spec, state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_state_dict(path)
    try:
        model = Filter(**spec)
    except (TypeError, ValueError) as err:
        raise FilterFileError(f"{path}: its metadata does not describe a filter ({err})") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        wrong = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
        raise FilterFileError(f"{path}: tensors do not match a filter of {spec}: missing "
                              f"{sorted(expected.keys() - found.keys())}, unexpected "
                              f"{sorted(found.keys() - expected.keys())}, mis-shaped {wrong}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from ..models.loading import open_safetensors
    try:
        with open_safetensors(path) as f:
            meta = (f.metadata() or {}).get("learn2pd_filter")
            state = {k: f.get_tensor(k) for k in f.keys()}
    except ValueError as err:  # already one line naming the file
        raise FilterFileError(str(err)) from None
    if meta is None:
        raise FilterFileError(f"{path}: no 'learn2pd_filter' metadata (not written by save_filter)")
    try:
        meta = json.loads(meta)
        spec = {"block_length": int(meta["block_length"]), "hidden": int(meta["hidden"]),
                "depth": int(meta["depth"]), "features": tuple(meta["features"])}
    except (ValueError, KeyError, TypeError) as err:
        raise FilterFileError(f"{path}: corrupt 'learn2pd_filter' metadata ({err!r})") from None
    return spec, state


def _read_state_dict(path: Path) -> tuple[dict, dict]:
    """A released Learn2PD state dict: linear1 ... linear{depth}, the last one's outputs the block length."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated archive, a pickle of other objects, ...: torch raises many kinds
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FilterFileError(f"{path}: not a readable torch state dict ({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FilterFileError(f"{path}: not a state dict of tensors")
    depth = len([k for k in state if k.startswith("linear") and k.endswith(".weight")])
    first, last = state.get("linear1.weight"), state.get(f"linear{depth}.weight")
    if first is None or last is None or first.dim() != 2 or last.dim() != 2:
        raise FilterFileError(f"{path}: no linear1.weight ... linear<depth>.weight matrices (keys: {sorted(state)[:6]})")
    return {"block_length": last.shape[0], "hidden": first.shape[0] if depth > 1 else None, "depth": depth}, state
