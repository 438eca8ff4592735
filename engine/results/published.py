"""The published CIFAR-100 numbers and how each published cell is run here.

A verbatim copy of ``../shared/reference/results.md`` §1 and §2 (where a method of the registry is
concerned), parsed into :data:`PUBLISHED`: {row label (``KD``, ``CRD+KD``, ``KD+LS``, ...):
{(teacher, student): (top-1, source key)}}, then the numbers a row declares from its method's own
README (``PublishedRow.published``). How each row is run is declared beside its method
(``distillers.reference.register_row``, :data:`ROWS`); :func:`settings` turns a row and a pair into
the flag values of that cell. ``scripts/make_configs.py`` writes them as YAML files and the collector
reads them (row labels of runs, published numbers). Rows with no method here: :data:`NOT_IMPLEMENTED`.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import distillers  # noqa: F401  (registers the methods and their rows)
from distillers.base import DISTILLERS
from distillers.reference import KD_T4, ROWS

Pair = Tuple[str, str]

#: results.md source keys (its "Source keys" table).
SOURCES = {
    "R": "HobbitLong/RepDistiller README.md",
    "G": "giakoumoglou/distillers README.md at 129aa3b",
    "M": "megvii-research/mdistiller README.md",
    "I": "roymiles/ITRD README.md (quotes the ReviewKD and WCoRD numbers)",
    "N": "WangYZ1608/Knowledge-Distillation-via-ND README.md",
    "L": "sunshangquan/logit-standardization-KD README.md",
    "C": "zhengli97/CTKD README.md",
    "D": "hunto/DIST_KD README.md",
}

# ------------------------------------------------------------------ results.md, verbatim
#: results.md §1.1 (RepD baselines + G).
TABLE_1_1 = """
| method | wrn-40-2→wrn-16-2 | wrn-40-2→wrn-40-1 | resnet56→resnet20 | resnet110→resnet20 | resnet110→resnet32 | resnet32x4→resnet8x4 | vgg13→vgg8 | src |
|---|---|---|---|---|---|---|---|---|
| Teacher | 75.61 | 75.61 | 72.34 | 74.31 | 74.31 | 79.42 | 74.64 | R |
| Student | 73.26 | 71.98 | 69.06 | 69.06 | 71.14 | 72.50 | 70.36 | R |
| KD | 74.92 | 73.54 | 70.66 | 70.67 | 73.08 | 73.33 | 72.98 | R |
| FitNet | 73.58 | 72.24 | 69.21 | 68.99 | 71.06 | 73.50 | 71.02 | R |
| AT | 74.08 | 72.77 | 70.55 | 70.22 | 72.31 | 73.44 | 71.43 | R |
| SP | 73.83 | 72.43 | 69.67 | 70.04 | 72.69 | 72.94 | 72.68 | R |
| CC | 73.56 | 72.21 | 69.63 | 69.48 | 71.48 | 72.97 | 70.71 | R |
| VID | 74.11 | 73.30 | 70.38 | 70.16 | 72.61 | 73.09 | 71.23 | R |
| RKD | 73.35 | 72.22 | 69.61 | 69.25 | 71.82 | 71.90 | 71.48 | R |
| PKT | 74.54 | 73.45 | 70.34 | 70.25 | 72.61 | 73.64 | 72.88 | R |
| AB | 72.50 | 72.38 | 69.47 | 69.53 | 70.98 | 73.17 | 70.94 | R |
| FT | 73.25 | 71.59 | 69.84 | 70.22 | 72.37 | 72.86 | 70.58 | R |
| FSP | 72.91 | N/A | 69.95 | 70.11 | 71.89 | 72.62 | 70.23 | R |
| NST | 73.68 | 72.24 | 69.60 | 69.53 | 71.96 | 73.30 | 71.53 | R |
| CRD | 75.48 | 74.14 | 71.16 | 71.46 | 73.48 | 75.51 | 73.94 | R |
| CRD+KD | 75.64 | 74.38 | 71.63 | 71.56 | 73.75 | 75.46 | 74.29 | G (from the CRD paper) |
| DCD | 74.99 | 73.69 | 71.18 | 71.00 | 73.12 | 74.23 | 73.22 | G |
| DCD+KD | 76.06 | 74.76 | 71.81 | 72.03 | 73.62 | 75.09 | 73.95 | G |
| RRD | 75.33 | 73.55 | 70.71 | 70.72 | 73.10 | 74.48 | 73.99 | G |
| RRD+KD | 75.66 | 74.67 | 72.19 | 71.74 | 73.54 | 75.08 | 74.32 | G |
"""
#: results.md §1.2 (later methods, same pairs).
TABLE_1_2 = """
| method | resnet56→resnet20 | resnet110→resnet32 | resnet32x4→resnet8x4 | wrn-40-2→wrn-16-2 | wrn-40-2→wrn-40-1 | vgg13→vgg8 | src |
|---|---|---|---|---|---|---|---|
| OFD | 70.98 | – | 74.95 | – | 74.33 | – | N |
| WCoRD | 71.92 | 74.20 | 76.15 | 76.11 | 74.72 | 74.72 | I |
| ReviewKD | 71.89 | 73.89 | 75.63 | 76.12 | 75.09 | 74.85 (74.84 in the DKD paper) | I |
| ITRD | 71.47 | 74.26 | 76.69 | 76.12 | 75.18 | 74.93 | I |
| DKD | 71.97 | 74.11 | 76.32 | 76.23 (76.24 in L) | 74.81 | 74.68 | M |
| KD+DOT | – | – | 75.12 | – | – | 73.77 | M |
| KD+CTKD | 71.19 | 73.52 | 73.39 | 75.45 | 73.93 | 73.52 | C, L |
| DIST | 71.75±0.30 (71.78 in N) | – | 76.31±0.19 (75.79 in N) | – | 74.43±0.24 (74.42 in N) | – | D |
| KD++ | 72.53 | – | 75.54 | – | 74.59 | – | N |
| DKD++ | 72.16 | – | 76.28 | – | 75.02 | – | N |
| MLKD | 72.19 | 74.11 | 77.08 | 76.63 | 75.35 | 75.18 | L |
| KD+LS | 71.43 | 74.17 | 76.62 | 76.11 | 74.37 | 74.36 | L |
| CTKD+LS | 71.34 | 74.01 | 76.67 | 76.08 | 74.58 | 74.47 | L |
| DKD+LS | 72.32 | 74.29 | 77.01 | 76.39 | 74.89 | 74.81 | L |
| MLKD+LS | 72.33 | 74.32 | 78.28 | 76.95 | 75.56 | 75.22 | L |
"""
#: results.md §1.2, the line under the table: "resnet110→resnet20, from R and L: ..." (KD and CRD are R's,
#: as in §1.1; ITRD's 71.99 is its README's, source I; WCoRD 71.88 is left out: not implemented here).
LINE_R110_R20 = ("resnet110", "resnet20"), {"KD": (70.67, "R"), "CRD": (71.46, "R"), "DKD": (71.06, "L"),
                                          "MLKD": (71.89, "L"), "KD+LS": (71.48, "L"), "MLKD+LS": (72.27, "L"),
                                          "ITRD": (71.99, "I")}
#: results.md §2 (different architecture families).
TABLE_2 = """
| method | vgg13→MobileNetV2 | ResNet50→MobileNetV2 | ResNet50→vgg8 | resnet32x4→ShuffleV1 | resnet32x4→ShuffleV2 | wrn-40-2→ShuffleV1 | src |
|---|---|---|---|---|---|---|---|
| Teacher | 74.64 | 79.34 | 79.34 | 79.42 | 79.42 | 75.61 | R |
| Student | 64.60 | 64.60 | 70.36 | 70.50 | 71.82 | 70.50 | R |
| KD | 67.37 | 67.35 | 73.81 | 74.07 | 74.45 | 74.83 | R |
| FitNet | 64.14 | 63.16 | 70.69 | 73.59 | 73.54 | 73.73 | R |
| AT | 59.40 | 58.58 | 71.84 | 71.73 | 72.73 | 73.32 | R |
| SP | 66.30 | 68.08 | 73.34 | 73.48 | 74.56 | 74.52 | R |
| CC | 64.86 | 65.43 | 70.25 | 71.14 | 71.29 | 71.38 | R |
| VID | 65.56 | 67.57 | 70.30 | 73.38 | 73.40 | 73.61 | R |
| RKD | 64.52 | 64.43 | 71.50 | 72.28 | 73.21 | 72.21 | R |
| PKT | 67.13 | 66.52 | 73.01 | 74.10 | 74.69 | 73.89 | R |
| AB | 66.06 | 67.20 | 70.65 | 73.55 | 74.31 | 73.34 | R |
| FT | 61.78 | 60.99 | 70.29 | 71.75 | 72.50 | 72.03 | R |
| NST | 58.16 | 64.96 | 71.28 | 74.12 | 74.68 | 74.89 | R |
| CRD | 69.73 | 69.11 | 74.30 | 75.11 | 75.65 | 76.05 | R |
| CRD+KD | 69.94 | 69.54 | 74.58 | 75.12 | 76.05 | 76.27 | G (from the CRD paper) |
| DCD | 68.35 | 67.39 | 73.85 | 74.26 | 75.26 | 74.98 | G |
| DCD+KD | 69.77 | 70.03 | 74.08 | 76.01 | 76.95 | 76.51 | G |
| RRD | 67.93 | 68.84 | 74.01 | 74.11 | 74.80 | 74.98 | G |
| RRD+KD | 69.98 | 69.13 | 74.26 | 75.18 | 76.83 | 76.31 | G |
| OFD | – | 69.04 | – | 75.98 | 76.82 | – | N |
| WCoRD | 70.02 | 70.12 | – | 75.77 | 76.48 | 76.68 | I |
| ReviewKD | 70.37 | 69.89 | – | 77.45 | 77.78 | 77.14 | I, N |
| ITRD | 70.39 | 71.34 | 75.49 | 76.69 | 77.40 | 77.09 | I |
| DKD | 69.71 | 70.35 | – | 76.45 | 77.07 | 76.70 | M |
| KD+DOT | – | – | – | – | 75.55 | – | M |
| KD+CTKD | 68.50 | 68.67 | – | – | 75.37 | – | L |
| DIST | – | 68.66±0.23 (69.17 in N) | – | 76.34±0.18 (75.23 in N) | 77.35±0.25 (76.08 in N) | – | D |
| KD++ | – | 70.10 | – | 75.45 | 76.42 | – | N |
| DKD++ | – | 70.82 | – | 77.11 | 77.49 | – | N |
| MLKD | 70.57 | 71.04 | – | – | 78.44 | – | L |
| KD+LS | 68.61 | 69.02 | – | – | 75.56 | – | L |
| DKD+LS | 69.98 | 70.45 | – | – | 77.37 | – | L |
| MLKD+LS | 70.94 | 71.19 | – | – | 78.76 | – | L |
"""
#: results.md §2, the line under the table: "wrn-40-2→MobileNetV2, from L: ...".
LINE_WRN_MV2 = ("wrn_40_2", "MobileNetV2"), {"KD": (68.36, "L"), "DKD": (69.28, "L"), "MLKD": (70.78, "L"),
                                             "MLKD+LS": (71.61, "L")}

#: Rows of results.md that are not methods of this registry (no file for them).
NOT_IMPLEMENTED = {"Teacher": "train_teacher.py run, not a distillation method",
                   "Student": "train_teacher.py run (vanilla student), not a distillation method",
                   "WCoRD": "not implemented"}


def _arch(name: str) -> str:
    return re.sub(r"^wrn-(\d+)-(\d+)$", r"wrn_\1_\2", name.strip())


def parse_table(text: str) -> Dict[str, Dict[Pair, Tuple[float, str]]]:
    """{row label: {pair: (first number of the cell, src)}}; '–' and 'N/A' cells are absent."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip().startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    pairs = [tuple(_arch(x) for x in c.split("→")) if "→" in c else None for c in header[1:]]
    out: Dict[str, Dict[Pair, Tuple[float, str]]] = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        source = cells[-1]
        row = out.setdefault(cells[0], {})
        for pair, text_ in zip(pairs, cells[1:-1]):
            match = re.match(r"(\d+(?:\.\d+)?)", text_)
            if pair is not None and match:
                row[pair] = (float(match.group(1)), source)
    return out


def _published() -> Dict[str, Dict[Pair, Tuple[float, str]]]:
    table: Dict[str, Dict[Pair, Tuple[float, str]]] = {}
    for text in (TABLE_1_1, TABLE_1_2, TABLE_2):
        for label, row in parse_table(text).items():
            for pair, value in row.items():
                table.setdefault(label, {}).setdefault(pair, value)
    for pair, row in (LINE_R110_R20, LINE_WRN_MV2):
        for label, value in row.items():
            table.setdefault(label, {}).setdefault(pair, value)
    return table


#: {row label: {(teacher, student): (published top-1, source key(s))}}: results.md §1-2, then the
#: numbers a method's row declares from its own README (``PublishedRow.published``) where results.md has none.
PUBLISHED = _published()
#: (row label, pair) of the cells results.md holds (the others come from a method's own README).
IN_RESULTS_MD = {(label, pair) for label, row in PUBLISHED.items() for pair in row}

#: Cells with reference settings but no published number (CAT-KD's fork configs): written so that runs
#: use the reference's settings.
EXTRA_CELLS: List[Tuple[str, Pair]] = [(label, tuple(pair)) for label, row in ROWS.items() for pair in row.extra_pairs]
for _label, _row in ROWS.items():
    for _pair, _value in _row.published.items():
        PUBLISHED.setdefault(_label, {}).setdefault(tuple(_pair), tuple(_value))


def settings(label: str, pair: Pair) -> Dict[str, object]:
    """The flag values of a cell, in file order: what the reference ran (weights and all method options)."""
    row = ROWS[label]
    cls = DISTILLERS.get(row.distill)
    out: Dict[str, object] = {"distill": row.distill, "model_s": pair[1], "model_t": pair[0], "dataset": "cifar100"}
    weights = {**cls.default_weights, **row.weights}
    for key in ("gamma", "alpha", "beta"):
        out[key] = float(weights[key])
    options = {k: v for k, v in cls.all_options().items() if v is not None and k not in row.skip}
    options.update(row.options)
    if row.per_pair:
        options.update(row.per_pair(pair))
    if weights["alpha"]:  # the KD term's temperature, unless the row sets it
        options.update({k: v for k, v in KD_T4.items() if k not in options})
    for key, value in options.items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def cells() -> List[Tuple[str, Pair]]:
    """Every (row label, pair) that has reference settings here: the published cells of rows we run,
    blocked ones included, then :data:`EXTRA_CELLS`."""
    out = [(label, pair) for label, row in PUBLISHED.items() if label in ROWS for pair in row]
    return out + [c for c in EXTRA_CELLS if c not in out]


def read_reference(path: str) -> Dict[str, Dict[Tuple[str, str], float]]:
    """results.md's tables whose columns are teacher→student pairs: {row label: {pair: value}}.

    A cell's first number counts ('74.85 (74.84 in the DKD paper)' -> 74.85, '76.31±0.19' -> 76.31);
    '–' and 'N/A' are absent. The first table that has a (row, pair) wins.
    """
    table: Dict[str, Dict[Tuple[str, str], float]] = {}
    cols: Optional[List[Optional[Tuple[str, str]]]] = None
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line.startswith("|"):
                cols = None
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cols is None:
                if cells and cells[0].lower() == "method" and any("→" in c for c in cells):
                    cols = [tuple(_arch(x) for x in c.split("→")) if "→" in c else None for c in cells[1:]]
                continue
            if set("".join(cells)) <= set("-: "):
                continue
            row = table.setdefault(cells[0], {})
            for pair, text in zip(cols, cells[1:]):
                match = re.match(r"\s*(\d+(?:\.\d+)?)", text)
                if pair is not None and match and pair not in row:
                    row[pair] = float(match.group(1))
    return table
