"""Learn2PD's filter f_theta: a tiny MLP from the current block's confidences to one logit per position,
read as "this position's prediction is already final"."""
from __future__ import annotations

import json
from pathlib import Path

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
    same = proposal[:, :, None] == proposal[:, None, :]  # [n, i, j]: j holds or predicts i's token
    same &= (proposal != eos_id)[:, :, None]
    outranks = strength[:, None, :] > strength[:, :, None]  # [n, i, j]: j outranks i
    return {"repeat": same.sum(-1) > 1, "outranked": (same & outranks).any(-1)}


class _BiasPerStep(dict):
    """The first layer's bias per step index, the step input folded in; filled as steps are met."""

    def __init__(self, bias, step_column):
        super().__init__()
        self.bias, self.step_column = bias, step_column

    def __missing__(self, step: int):
        self[step] = bias = self.bias if self.step_column is None else self.bias + step * self.step_column
        return bias


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

    def decode_logits(self, confidence: Tensor, step: int, prediction: Tensor | None = None,
                      tokens: Tensor | None = None, masked: Tensor | None = None, eos_id: int | None = None) -> Tensor:
        """`block_logits` for one decoding step (token flags computed here when the filter reads tokens), with
        the weights pre-transposed and the constant position and step inputs folded into a first-layer bias per
        step. On the CPU it runs in numpy on zero-copy views: at batch 1 a step is all per-op overhead, and
        numpy's is half of torch's."""
        first_weight, first_bias, rest = self._folded()
        on_cpu = confidence.device.type == "cpu"  # the policy keeps the filter on the confidences' device
        inputs = [confidence.float()] + ([prediction, tokens, masked] if self.reads_tokens else [])
        if on_cpu:
            inputs = [t.numpy() for t in inputs]
        parts = inputs[:1]
        if self.reads_tokens:
            flags = token_flags(inputs[1], inputs[2], inputs[0], inputs[3], eos_id)
            parts += [flags[name] for name in self.per_position[1:]]
        (n, width), B = parts[0].shape, self.block_length
        if width == B:
            h = (np.concatenate if on_cpu else torch.cat)(parts, -1)  # bool flags promote to float
        else:  # an EoTP-shortened block: each feature's inputs zero-padded to B
            h = np.zeros((n, len(parts) * B), np.float32) if on_cpu else confidence.new_zeros(n, len(parts) * B)
            for i, part in enumerate(parts):
                h[:, i * B:i * B + width] = part
        h = h @ first_weight
        h += first_bias[step]
        for weight, bias in rest:  # in place: at batch 1 each allocation is a visible share of a step
            if on_cpu:
                np.maximum(h, 0, out=h)
            else:
                h.clamp_(min=0)
            h = h @ weight
            h += bias
        h = h[:, :width]
        return torch.from_numpy(h) if on_cpu else h

    def _folded(self) -> tuple:
        """The decoding copy of the weights, rebuilt when they change or move, as numpy views on the CPU and
        tensors elsewhere: the first layer's transposed weight over the per-position inputs, its bias per step
        index (position and step inputs folded in), and (transposed weight, bias) for each later layer."""
        params = self.__dict__.get("_params") or list(self.parameters())
        key = ([p._version for p in params], params[0].device)
        if self.__dict__.get("_fold_key") != key:
            self.__dict__["_params"] = params
            self.__dict__["_fold_key"], self.__dict__["_fold"] = key, self._fold_for_decoding()
        return self.__dict__["_fold"]

    def _fold_for_decoding(self) -> tuple:
        B = self.block_length
        with torch.no_grad():
            first = self.linear1.weight
            first_weight = torch.cat([first[:, self.columns[name]] for name in self.per_position], 1).t().contiguous()
            first_bias = self.linear1.bias.clone()
            if "position" in self.features:
                positions = torch.arange(B, device=first.device).float() / B
                first_bias += first[:, self.columns["position"]] @ positions
            step_column = first[:, self.columns["step"]].squeeze(1) / B if "step" in self.features else None
            rest = [(getattr(self, f"linear{i}").weight.t().contiguous(), getattr(self, f"linear{i}").bias.clone())
                    for i in range(2, self.depth + 1)]
        if first.device.type == "cpu":
            first_weight, first_bias = first_weight.numpy(), first_bias.numpy()
            step_column = None if step_column is None else step_column.numpy()
            rest = [(w.numpy(), b.numpy()) for w, b in rest]
        return first_weight, _BiasPerStep(first_bias, step_column), rest

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


def load_filter(path: str | Path, device="cpu") -> Filter:
    """Load a filter saved by this package (.safetensors), a released Learn2PD state dict (.pth/.pt), or a
    shipped filter by name ("tiny")."""
    path = resolve_filter(path)
    if not path.exists():
        raise FileNotFoundError(f"filter file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["learn2pd_filter"])
            state = {k: f.get_tensor(k) for k in f.keys()}
        model = Filter(meta["block_length"], meta["hidden"], meta["depth"], tuple(meta["features"]))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        depth = len([k for k in state if k.endswith(".weight")])
        first, last = state["linear1.weight"], state[f"linear{depth}.weight"]
        model = Filter(block_length=last.shape[0], hidden=first.shape[0] if depth > 1 else None, depth=depth)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)
