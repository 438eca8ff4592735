"""What the project knows about each method's reference code, declared beside the method.

A method file registers the golden files it reproduces (:func:`register_golden`: which
registered distiller and options reproduce a reference file, which tap each input stands for,
and how the reference's parameter names map onto ours) and the published rows it runs
(:func:`register_row`: the weights and options of each published CIFAR-100 cell, which
``scripts/make_configs.py`` writes as configs). The adapter that runs them is
:mod:`distillers.golden`; this module holds only the declarations, so that adding a method
touches its own file, its golden file and its tests, nothing central.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from core.registry import Registry

#: ``method`` field of a golden file -> its :class:`GoldenEntry`; filled by the method modules.
GOLDEN = Registry("golden entry")
#: published row label (``KD+LS``, ``CRD+KD``, ...) -> its :class:`PublishedRow`; filled by the method modules.
ROWS = Registry("published row")


#: The tolerance of a float64 comparison when the reference path allows it (both sides in float64).
TOLERANCE = 1e-10
#: What a ``variants`` declaration may hold (see :class:`GoldenEntry`).
VARIANT_FIELDS = frozenset({"options", "attributes", "unchecked", "inputs_from"})


@dataclass(frozen=True)
class GoldenEntry:
    """How one reference method maps onto a registered distiller.

    inputs: golden input name -> ``"s:<tap>"`` / ``"t:<tap>"`` (student/teacher
        feature; student ones get gradients) or ``"batch:<key>"``; ``"strong_s:<tap>"`` and
        ``"strong_t:<tap>"`` are a second augmented view's taps (``batch["strong"]``), optional in
        a file. A module tap is given by
        its tensors, ``"<side>:<tap>.weight"`` / ``.bias`` (the teacher's classifier as
        ``t:classifier.weight``, OFD's BatchNorms as the list ``t:stages_bn.weight``): a 2-D
        weight becomes an ``nn.Linear`` (it may be called), a 4-D weight an ``nn.Conv2d`` with stride 1
        and 'same' padding (a stage stand-in: FCFD's ``s:stage2:module.weight``), any other a module that
        carries the tensors; a student module's tensors get gradients (CAT-KD's classifier).
        A list input that spans several taps joins them with ``+`` in order, a group
        taking the elements the single taps leave (``"s:stem+stages"``); ``_`` marks an
        element the method does not read (its reference gradient is zero).
    options: fixed distiller options, only for settings the reference records no hparam for.
    hparam_options: option name -> the file's ``hparams`` key that sets it; the option is built from
        the file's value (so one method is checked at the settings each file records) and a file
        without that key fails. An option is either fixed or read from the file, never both.
    hparam_fixed: ``hparams`` key -> the value the method has built in (no option sets it); a file
        recording another value fails (ours cannot be set to it).
    hparam_info: ``hparams`` keys that set nothing the compared numbers depend on (loss weights the
        file does not apply, descriptions, sizes that follow from the inputs). A key of the file's
        hparams that is none of mapped, fixed, info or ``spec_from_hparams`` fails.
    spec_from_hparams: ShapeSpec field -> ``hparams`` key (e.g. ``num_data``).
    renames: (reference prefix, our prefix) pairs applied to parameter names.
    outputs: distiller output key -> ``extra`` key compared as well (e.g. SimKD's prediction).
    call: the distiller method that gives ``loss`` (``"init_forward"`` when the reference
        number is an initialisation-stage loss, as for AB and FSP).
    state_from_inputs: our state_dict key -> golden input name, for state the reference keeps
        outside its module (SimKD's frozen copy of the teacher classifier).
    ignore_params: ``fnmatch`` patterns of reference ``params`` the project does not build
        (SemCKD's query/key ``regressor`` that the reference's forward never calls, ICKD's unused
        ``embed_t``); their ``state_after`` entries are skipped too.
    function: ``"module:name"`` of a plain function checked instead of a distiller, for reference
        numbers that are not a loss (Recall@K, a sampler's probabilities). ``inputs`` map golden
        input names to ``"arg:<keyword>"``; ``options`` are extra keywords. The function returns
        the tensor compared with ``loss``, or a tuple whose first element is; ``outputs`` then
        maps a tuple position (``"1"``) to the ``extra`` key it must equal.
    variants: ``extra`` key -> a second step whose reference numbers are that ``extra`` entry (its
        ``loss``, ``grads`` or ``grad_<input>`` keys, ``state_after`` and the declared outputs; its own
        ``inputs``, ``params`` and ``hparams`` replace the file's, its hparams setting the options as
        above). A declared variant missing from a file fails. ``options`` fix options of the variant
        that its hparams do not record (AOMD's ``mode1``); ``attributes`` set documented class
        attributes of the built distiller (MLKD's ``strong_levels_on_weak``, the reference's slip);
        ``unchecked`` = {``grads`` key: why} for a gradient the reference cannot give (CTKD's NaN);
        ``inputs_from`` = ``("module:name", keywords)`` names a
        function called with the golden inputs its signature asks for, whose returned dict
        replaces those inputs and is itself compared with the ``extra`` entry (the triplet
        samplers' index vectors, then the loss on them).
    diagnostics: ``extra`` keys that are diagnostics (golden/README.md: optional to compare), not
        compared; any other ``extra`` key the adapter does not compare fails.
    tolerance: the tightest tolerance the reference path allows when both sides run in float64; the
        adapter compares at min(file tolerance, this). Looser than 1e-10 only with ``tolerance_why``.
    task: the trainer task whose training step exercises the entry (``tests/test_methods_training.py``
        covers ``classification``; the metric-learning entries run in ``tests/test_metric_learning.py``).
    """

    distiller: str
    inputs: Mapping[str, str]
    options: Mapping[str, Any] = field(default_factory=dict)
    hparam_options: Mapping[str, str] = field(default_factory=dict)
    spec_from_hparams: Mapping[str, str] = field(default_factory=dict)
    renames: Sequence[Tuple[str, str]] = ()
    outputs: Mapping[str, str] = field(default_factory=dict)
    call: str = "forward"
    state_from_inputs: Mapping[str, str] = field(default_factory=dict)
    ignore_params: Sequence[str] = ()
    function: str = ""
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    hparam_fixed: Mapping[str, Any] = field(default_factory=dict)
    hparam_info: Sequence[str] = ()
    diagnostics: Sequence[str] = ()
    tolerance: float = TOLERANCE
    tolerance_why: str = ""
    task: str = "classification"

    def __post_init__(self):
        both = sorted(set(self.options) & set(self.hparam_options))
        if both:
            raise ValueError(f"options {both} are both fixed and read from the file's hparams: choose one")
        keys = [*self.hparam_options.values(), *self.spec_from_hparams.values(), *self.hparam_fixed,
                *self.hparam_info]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"hparams keys {twice} are declared more than once")
        if self.tolerance > TOLERANCE and not self.tolerance_why:
            raise ValueError(f"a tolerance looser than {TOLERANCE:g} needs its reason (tolerance_why)")
        for key, variant in self.variants.items():
            unknown = sorted(set(variant) - VARIANT_FIELDS)
            if unknown:
                raise ValueError(f"variant '{key}': unknown field(s) {unknown}; known: {sorted(VARIANT_FIELDS)}")


LOGITS = {"logit_s": "s:logits", "logit_t": "t:logits"}
EMBEDS = {"embed_s": "s:logits", "embed_t": "t:logits"}  # the embedding net's output is its logits tap
LABELLED = {"embeddings": "s:logits", "labels": "batch:labels"}
TRIPLETS = {"anchor_idx": "batch:anchor_idx", "pos_idx": "batch:pos_idx", "neg_idx": "batch:neg_idx"}


def mined_variant(sampler: str) -> Dict[str, Any]:
    """A triplet ``extra`` variant: the sampler's indices (squared-distance mining, as L2Triplet)."""
    return {"inputs_from": ("distillers.methods._pairs:mined_triplets", {"sampler": sampler, "squared": True})}


def register_golden(method: str, entry: GoldenEntry) -> GoldenEntry:
    """Declare that golden files whose ``method`` field is ``method`` are reproduced by ``entry``
    (one entry per reference method; a second registration of the same name is an error)."""
    if not isinstance(entry, GoldenEntry):
        raise TypeError(f"register_golden('{method}', ...) expects a GoldenEntry, got {entry!r}")
    GOLDEN.register(method)(entry)
    return entry


#: The RepDistiller CIFAR-100 recipe's loss weights, which the registry's defaults are.
REPDISTILLER_WEIGHTS = "HobbitLong/RepDistiller scripts/run_cifar_distill.sh weights (the registry's defaults)"
#: The KD term's reference temperature, for rows that add it with -a (and what a row that adds it
#: without setting it runs: engine.results.published.settings).
KD_T4 = {"kd_T": 4.0}


@dataclass(frozen=True)
class PublishedRow:
    """How one published row (``shared/reference/results.md``) is run here: ``--distill`` plus weights and
    options over the registry's defaults. ``scripts/make_configs.py`` writes one config per published cell
    of the row (and per ``extra_pairs`` pair: reference settings without a published number)."""
    label: str
    folder: str                       # configs/cifar100/<folder>/
    distill: str
    reference: str                    # where the settings come from
    weights: Dict[str, float] = field(default_factory=dict)   # gamma/alpha/beta over the registry's
    options: Dict[str, object] = field(default_factory=dict)  # method options / kd_T over the registry's
    per_pair: Optional[Callable[[Tuple[str, str]], Dict]] = None          # pair -> options (DKD's beta, CAT-KD)
    skip: Tuple[str, ...] = ()        # registry options left out of the file (unused by this row)
    requires: Tuple[str, ...] = ()    # train_student.py flags the row needs (written only when they exist)
    blocked: str = ""                 # why no file is written (a data path the trainer lacks)
    note: str = ""
    extra_pairs: Tuple[Tuple[str, str], ...] = ()  # pairs with reference settings, no published number
    #: (teacher, student) -> (top-1, source) for a row results.md does not hold (a method's own README):
    #: its cells are published cells like results.md's; results.md wins where both give a number.
    published: Mapping[Tuple[str, str], Tuple[float, str]] = field(default_factory=dict)


def register_row(row: PublishedRow) -> PublishedRow:
    """Declare how published row ``row.label`` is run (one declaration per label)."""
    if not isinstance(row, PublishedRow):
        raise TypeError(f"register_row expects a PublishedRow, got {row!r}")
    ROWS.register(row.label)(row)
    return row
