"""Learn2PD's filter f_theta: a tiny MLP from the current block's confidences to one logit per position,
read as "this position's prediction is already final"."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

FEATURES = ("confidence", "position", "step")  # inputs the filter can see; the paper uses confidences only
NAMED_FILTERS = {"tiny": Path(__file__).resolve().parents[1] / "assets" / "tiny-llada" / "filter.safetensors"}


def resolve_filter(name_or_path: str | Path) -> Path:
    return NAMED_FILTERS.get(str(name_or_path), Path(name_or_path).expanduser())


class Filter(nn.Module):
    """`depth` linear layers with ReLU between them; layer i is named `linear{i}` so the authors' released
    `layer_2_flan.pth` (linear1: 32->32, linear2: 32->32) loads as is. Inputs: B confidences, plus B position
    indices / one step index when those features are switched on."""

    def __init__(self, block_length: int = 32, hidden: int | None = None, depth: int = 2,
                 features: tuple[str, ...] = ("confidence",)):
        super().__init__()
        unknown = set(features) - set(FEATURES)
        if unknown or "confidence" not in features:
            raise ValueError(f"filter features must include 'confidence' and come from {FEATURES}: {features}")
        self.block_length, self.depth, self.features = block_length, depth, tuple(features)
        self.hidden = hidden or block_length
        inputs = block_length * (1 + ("position" in features)) + ("step" in features)
        widths = [inputs] + [self.hidden] * (depth - 1) + [block_length]
        for i in range(depth):
            self.add_module(f"linear{i + 1}", nn.Linear(widths[i], widths[i + 1]))

    def featurize(self, confidence: Tensor, step: int | Tensor = 0) -> Tensor:
        """[n, width <= B] confidences -> [n, inputs]; a block shortened by EoTP is zero-padded to B."""
        n, width = confidence.shape
        padded = confidence.float()
        if width < self.block_length:
            padded = nn.functional.pad(padded, (0, self.block_length - width))
        if self.features == ("confidence",):
            return padded
        parts = [padded]
        if "position" in self.features:
            parts.append(torch.arange(self.block_length, device=confidence.device).float()
                         .div(self.block_length).expand(n, -1))
        if "step" in self.features:
            parts.append(torch.as_tensor(step, device=confidence.device).float().reshape(-1, 1).expand(n, 1)
                         / self.block_length)
        return torch.cat(parts, -1)

    def forward(self, features: Tensor) -> Tensor:
        h = features
        for i in range(1, self.depth + 1):
            h = getattr(self, f"linear{i}")(h)
            if i < self.depth:
                h = torch.relu(h)
        return h

    def block_logits(self, confidence: Tensor, step: int | Tensor = 0) -> Tensor:
        """f(c) per block position, cropped back to the block's width."""
        if torch.is_grad_enabled() or not isinstance(step, int):
            return self(self.featurize(confidence, step))[:, :confidence.shape[1]]
        return self._decode_logits(confidence, step)  # (no autograd: pre-folded weights)

    def _decode_logits(self, confidence: Tensor, step: int) -> Tensor:
        """The same numbers on the decoding hot path, where a step costs microseconds: weights pre-transposed,
        the constant position inputs folded into the first bias, the step input one scaled column."""
        params = self.__dict__.get("_params") or list(self.parameters())
        fold = self.__dict__.get("_fold")
        version = [p._version for p in params]
        if fold is None or fold[0] != version or fold[1][0][0].device != params[0].device:
            fold = self._fold_for_decoding(version)
        _, layers, step_column = fold
        B, width = self.block_length, confidence.shape[1]
        h = confidence if confidence.dtype == torch.float32 else confidence.float()
        if width < B:
            h = nn.functional.pad(h, (0, B - width))
        (weight, bias), *rest = layers
        if step_column is not None and step:
            bias = torch.add(bias, step_column, alpha=step)
        h = torch.addmm(bias, h, weight)
        for weight, bias in rest:
            h = torch.addmm(bias, h.relu_(), weight)
        return h if width == B else h[:, :width]

    def _fold_for_decoding(self, version: list[int]) -> tuple:
        B = self.block_length
        self.__dict__["_params"] = list(self.parameters())
        with torch.no_grad():
            layers = [(getattr(self, f"linear{i}").weight.t().contiguous(), getattr(self, f"linear{i}").bias.clone())
                      for i in range(1, self.depth + 1)]
            first = self.linear1.weight
            if "position" in self.features:
                layers[0][1].add_(first[:, B:2 * B] @ (torch.arange(B, device=first.device).float() / B))
            layers[0] = (layers[0][0][:B], layers[0][1])  # confidence rows of the transposed weight
            step_column = first[:, -1] / B if "step" in self.features else None
        fold = (version, layers, step_column)
        self.__dict__["_fold"] = fold
        return fold

    def accept_probability(self, confidence: Tensor, step: int | Tensor = 0) -> Tensor:
        return torch.sigmoid(self.block_logits(confidence, step))

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
