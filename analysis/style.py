"""What every figure and table of a sweep shares: one colour per strategy, markers per loop switch, the
timing-trust mark, the knob that a method family sweeps, and the caption saying what was measured.

Nothing here names a strategy: colours come from the strategy's name, the oracle's grey from
`needs_reference`, the reference star from `is_reference` (columns of `analysis.collect`).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from .collect import knob_names as knob_columns, method_label

REFERENCE_GREY = "0.5"  # strategies that need the reference answer: drawn as a reference, never a competitor
UNTRUSTED = "†"
UNTRUSTED_NOTE = f"{UNTRUSTED} timing flagged as untrusted (see the record's timing.reasons); speed not comparable"
LOOP_SWITCHES = ["strategy", "eotp", "cache", "gen_length", "block_length"]
ERROR_BARS = "error bars: ± 1 stderr of accuracy"


def knob_names(cells: pd.DataFrame) -> list[str]:
    """The sweep's knob columns, and not columns an analysis step added (a label, a flag): only names some
    cell's `knobs` holds."""
    held = {k for knobs in column(cells, "knobs", None).dropna() for k in knobs}
    return [k for k in knob_columns(cells) if k in held]


def column(cells: pd.DataFrame, name: str, default) -> pd.Series:
    """`cells[name]`, or `default` on every row where the sweep's records predate that column."""
    if name in cells.columns:
        return cells[name]
    return pd.Series([default] * len(cells), index=cells.index, dtype=object if default is None else None)


def flag(cells: pd.DataFrame, name: str) -> pd.Series:
    """A boolean column (needs_reference, is_reference), False where absent or missing."""
    return column(cells, name, False).fillna(False).astype(bool)


def trusted(cells: pd.DataFrame) -> pd.Series:
    """The cells whose timing may be compared (`timing_trusted`; records without the flag count as trusted)."""
    return column(cells, "timing_trusted", True).fillna(True).astype(bool)


def registered_strategies() -> list[str]:
    """Every strategy the decoding package registers, by name (what a sweep can contain)."""
    from harness.decoding import POLICIES
    return sorted(POLICIES)


def palette() -> list:
    """Distinct colours, strongest first: tab20's dark shades, then its light ones (its greys, kept for
    references, left out), then tab20b: room for every registered strategy."""
    import matplotlib
    tab20, tab20b = matplotlib.colormaps["tab20"].colors, matplotlib.colormaps["tab20b"].colors
    greys = (14, 15)
    return [tab20[i] for i in [*range(0, 20, 2), *range(1, 20, 2)] if i not in greys] + list(tab20b)


def strategy_colours(strategies) -> dict:
    """One colour per strategy, the same in every figure and every sweep: the registered strategies take the
    palette's slots in name order (distinct while they fit the palette); a name not registered (an older
    record's) takes the first free slot from a digest of its name. The palette's grey is left to references."""
    colours = palette()
    slots = range(len(colours))
    names = [str(s) for s in pd.unique(pd.Series(list(strategies), dtype=object).dropna())]
    out = {name: colours[slots[i % len(slots)]] for i, name in enumerate(registered_strategies())}
    taken = {colours.index(c) for c in out.values()}
    for name in sorted(set(names) - set(out)):
        start = int(hashlib.sha1(name.encode()).hexdigest(), 16)
        free = [slots[(start + i) % len(slots)] for i in range(len(slots))]
        out[name] = colours[next((f for f in free if f not in taken), free[0])]
        taken.add(colours.index(out[name]))
    return {name: out[name] for name in names}


def colours_for(cells: pd.DataFrame) -> dict:
    """strategy -> colour for a sweep's figures: `strategy_colours`, grey for strategies needing the answer."""
    colours = strategy_colours(column(cells, "strategy", None))
    colours.update({str(s): REFERENCE_GREY for s in cells.loc[flag(cells, "needs_reference"), "strategy"]})
    return colours


def strategy_order(cells: pd.DataFrame) -> list[str]:
    """The sweep's strategies in `method_order`'s reading order."""
    return list(dict.fromkeys(str(s) for s in cells.loc[method_order(cells), "strategy"]))


def marker(eotp: bool, cache) -> str:
    """Loop switches as marker shapes: circle/square = plain/EoTP, triangles = prefix cache, diamonds = dual."""
    cache = "none" if cache is None or (isinstance(cache, float) and np.isnan(cache)) else str(cache)
    shapes = {"none": "os", "prefix": "^v", "dual": "DP"}.get(cache, "<>")
    return shapes[bool(eotp)]


def method_order(cells: pd.DataFrame) -> list:
    """Row index of `cells` in reading order: the reference first, then strategies by name, each with its
    knob values ascending and its loop switches, and the cells that need the reference answer last."""
    keys = pd.DataFrame({"reference": ~flag(cells, "is_reference"), "oracle": flag(cells, "needs_reference"),
                         "strategy": column(cells, "strategy", "").astype(str)}, index=cells.index)
    for name in knob_names(cells) + ["eotp", "cache", "gen_length", "block_length"]:
        keys[name] = column(cells, name, None)
    return list(keys.sort_values(list(keys.columns), na_position="first", kind="stable").index)


def swept_knob(family: pd.DataFrame) -> str | None:
    """The knob a method family sweeps: the knob column with the most distinct values (None when none varies)."""
    counts = {k: family[k].nunique() for k in knob_names(family)}
    varying = {k: n for k, n in counts.items() if n > 1}
    return max(varying, key=varying.get) if varying else None


def families(cells: pd.DataFrame):
    """(family label, swept knob or None, the family's cells sorted along the knob): cells sharing strategy,
    loop switches and every knob but the one swept (G and B in the label when the cells have several)."""
    knobs = knob_names(cells)
    lengths = [(c, n) for c, n in (("gen_length", "G"), ("block_length", "B")) if column(cells, c, None).nunique() > 1]
    for _, group in cells.groupby([c for c in LOOP_SWITCHES if c in cells.columns], dropna=False, sort=True):
        knob = swept_knob(group)
        fixed = [k for k in knobs if k != knob]
        parts = group.groupby(fixed, dropna=False) if fixed else [(None, group)]
        for _, family in parts:
            swept = knob if knob and family[knob].nunique() > 1 else None  # a lone variant is no sweep
            family = family.sort_values(swept) if swept else family
            label = label_without(family.iloc[0], swept) + "".join(f", {n}={family[c].iloc[0]:g}" for c, n in lengths)
            yield label, swept, family


def label_without(row, knob: str | None) -> str:
    """`method_label` of a cell with one knob left out (the one its family sweeps)."""
    if knob is None:
        return method_label(row)
    row = row.to_dict() if hasattr(row, "to_dict") else dict(row)
    knobs = dict(row.get("knobs") or {})
    knobs.pop(knob, None)
    return method_label({**row, "knobs": knobs, "label": None, knob: np.nan})  # relabelled from the knobs left


def _values(cells: pd.DataFrame, name: str) -> str:
    values = [v for v in pd.unique(column(cells, name, None).dropna())]
    fmt = (lambda v: str(int(v)) if isinstance(v, (int, float, np.number)) and float(v).is_integer() else str(v))
    return "/".join(fmt(v) for v in sorted(values, key=str)) if values else "?"


def caption(cells: pd.DataFrame, errors: bool = True, speedup: bool = True) -> str:
    """Model, N problems, G, B and hardware of `cells`, and what the error bars are (with `errors`; the
    speedup's IQR when `speedup` is drawn and recorded)."""
    hardware = _values(cells, "device_name") if column(cells, "device_name", None).notna().any() \
        else _values(cells, "device")
    text = (f"{_values(cells, 'model')}, N={_values(cells, 'samples')} problems, G={_values(cells, 'gen_length')}, "
            f"B={_values(cells, 'block_length')}, {hardware}")
    if errors:
        text += f"; {ERROR_BARS}"
        if speedup and column(cells, "speedup_q1", None).notna().any():
            text += "; speedup: median and IQR of paired rounds"
    return text
