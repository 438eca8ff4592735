"""The golden adapter fails a file that is wrong anywhere it compares (issue 22).

Every compared value of every golden file (loss, each gradient, each buffer after the step, each declared
output, ``extra.step2`` and the declared variants) is moved by ten times the tolerance the adapter compares
at, one value at a time, on a copy in memory: the adapter must fail and name that value. A removed gradient
or buffer, an unknown key, a missing variant or output, and hparams that contradict the method fail too.
"""
import copy

import pytest
import torch

from distillers import golden
from distillers.golden import GoldenCase
from distillers.reference import GoldenEntry, VARIANT_FIELDS
from conftest import OWN_GOLDEN, golden_files

FILES = [p for p in golden_files() if torch.load(p, weights_only=True)["method"] in golden.TABLE]
pytestmark = pytest.mark.skipif(not FILES, reason="no golden files")
#: values perturbed one at a time per kind of value in each section of a file (the last ones; all of them
#: are also moved together once, each to be named)
SAMPLE = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors, many runs: one intra-op thread is many times faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(path):
    return torch.load(path, weights_only=True)


def _leaf_path(value, path=()):
    """The path to the last tensor of a (nested) list, and the label suffix naming it."""
    if isinstance(value, (list, tuple)):
        return _leaf_path(value[-1], path + (len(value) - 1,))
    return path, "".join(f"[{i}]" for i in path)


def compared_values(record, entry):
    """(label the adapter reports, path in the record) for every value the file format says is compared."""
    ignored = lambda key: any(golden.fnmatchcase(key, p) for p in entry.ignore_params)  # noqa: E731
    found = [("loss", ("loss",))]

    def section(ref, prefix, at):
        for key in ref.get("grads", {}):
            found.append((f"{prefix}grad {key}", at + ("grads", key)))
        for key in ref.get("state_after", {}):
            if not ignored(key):
                found.append((f"{prefix}state_after {key}", at + ("state_after", key)))

    section(record, "", ())
    extra = record["extra"]
    for out, extra_key in entry.outputs.items():
        found.append((f"output {out}", ("extra", extra_key)))
    if "step2" in extra:
        found.append(("step2 loss", ("extra", "step2", "loss")))
        section(extra["step2"], "step2 ", ("extra", "step2"))
    for name in entry.variants:
        variant, at, prefix = extra[name], ("extra", name), f"extra.{name} "
        found.append((prefix + "loss", at + ("loss",)))
        section(variant, prefix, at)
        for key in variant:
            if key.startswith("grad_"):
                found.append((f"{prefix}grad {key[len('grad_'):]}", at + (key,)))
            elif key in entry.outputs.values():
                out = next(o for o, e in entry.outputs.items() if e == key)
                found.append((f"{prefix}output {out}", at + (key,)))
            elif key not in golden.VARIANT_KEYS and key not in entry.diagnostics:  # a sampler's index vectors
                found.append((prefix + key, at + (key,)))
    return found


def _moved(tensor, tol):
    """The tensor with its largest element moved by ten tolerances (relative and absolute), or an
    integer tensor with one element off by one."""
    tensor = tensor.clone()
    flat = tensor.view(-1)
    if tensor.is_floating_point():
        i = int(flat.abs().argmax())
        flat[i] += 10 * tol * (1 + flat[i].abs())
    else:
        flat[-1] += 1
    return tensor


def perturbed(record, path, tol):
    """A copy of ``record`` (copied along ``path`` only) with the value at ``path`` moved; its label suffix."""
    record = dict(record)
    node = record
    for key in path[:-1]:
        node[key] = dict(node[key])
        node = node[key]
    value = node[path[-1]]
    inner, suffix = _leaf_path(value)
    if not inner:
        node[path[-1]] = _moved(value, tol)
        return record, suffix
    copied = copy.copy(value)
    node[path[-1]] = copied
    for i in inner[:-1]:
        copied[i] = copy.copy(copied[i])
        copied = copied[i]
    copied[inner[-1]] = _moved(copied[inner[-1]], tol)
    return record, suffix


def _sample(values):
    """Up to SAMPLE values of each kind (loss, input gradient, parameter gradient, buffer, output, index
    vector) in each section (main step, step2, each variant)."""
    by_section = {}
    for label, path in values:
        words = label.split(" ")
        kind = path[:-1] + (words[-2] if len(words) > 1 else label, words[-1].startswith("params."))
        by_section.setdefault(kind, []).append((label, path))
    return [value for group in by_section.values() for value in group[-SAMPLE:]]


def _named(problems, label):
    return any(p.startswith(label + ":") or p.startswith(label + " ") for p in problems)


@pytest.mark.parametrize("path", FILES, ids=lambda p: ("own/" if p.parent == OWN_GOLDEN else "shared/") + p.stem)
def test_ten_tolerances_anywhere_fail_naming_the_value(path):
    record = _load(path)
    case = GoldenCase(record, complete=True)
    assert case.run().ok  # the file itself passes
    values = compared_values(record, case.entry)
    for label, where in _sample(values):
        bad, suffix = perturbed(record, where, case.tol)
        outcome = GoldenCase(bad, complete=True).run()
        assert not outcome.ok and _named(outcome.problems, label + suffix), (label + suffix, outcome.problems)
    everything = record
    labels = []
    for label, where in values:
        everything, suffix = perturbed(everything, where, case.tol)
        labels.append(label + suffix)
    problems = GoldenCase(everything, complete=True).run().problems
    assert [label for label in labels if not _named(problems, label)] == []


def _removals(record, entry):
    """One removed student-input gradient, parameter gradient and buffer of a file (where it has them)."""
    grads = list(record["grads"])
    inputs = [k for k in grads if not k.startswith("params.")]
    params = [k for k in grads if k.startswith("params.")]
    state = [k for k in record["state_after"] if not any(golden.fnmatchcase(k, p) for p in entry.ignore_params)]
    return [("grads", k) for k in inputs[:1] + params[-1:]] + [("state_after", k) for k in state[:1]]


@pytest.mark.parametrize("path", [p for p in FILES if not golden.TABLE[_load(p)["method"]].function],
                         ids=lambda p: ("own/" if p.parent == OWN_GOLDEN else "shared/") + p.stem)
def test_a_removed_gradient_or_buffer_fails(path):
    record = _load(path)
    entry = golden.TABLE[record["method"]]
    for section, key in _removals(record, entry):
        bad = {**record, section: {k: v for k, v in record[section].items() if k != key}}
        outcome = GoldenCase(bad, complete=True).run()
        assert not outcome.ok and any(key in p for p in outcome.problems), (section, key, outcome.problems)


# ---------------------------------------------------------------------------- file structure
def _kd():
    return _load(next(p for p in FILES if p.stem == "kd"))


def _problems(record):
    return GoldenCase(record, complete=True).run().problems


def test_unknown_keys_fail_and_diagnostics_do_not():
    record = _kd()
    assert any("extra.surprise" in p for p in _problems({**record, "extra": {"surprise": torch.zeros(1)}}))
    assert any("inputs.target" in p for p in _problems({**record, "inputs": {**record["inputs"],
                                                                             "target": torch.zeros(4)}}))
    assert any("shiny" in p for p in _problems({**record, "shiny": 1}))
    ofd = _load(OWN_GOLDEN / "ofd.pt")  # margins, mask counts: declared diagnostics, not compared
    assert "mask_counts" in golden.TABLE["ofd"].diagnostics and GoldenCase(ofd, complete=True).run().ok


def test_hparams_set_the_options_and_contradictions_fail():
    record = _kd()
    # the temperature comes from the file: the same numbers recorded at T 2 cannot pass
    assert any(p.startswith("loss:") for p in _problems({**record, "hparams": {**record["hparams"], "T": 2.0}}))
    assert any("no 'T'" in p for p in _problems({**record, "hparams": {"reduction": "x"}}))
    assert any("not known to the entry" in p for p in _problems({**record, "hparams": {**record["hparams"],
                                                                                       "beta": 3.0}}))
    # a value the method has built in (hparam_fixed): another one fails rather than being overridden
    kd_ls = _load(OWN_GOLDEN / "kd_ls.pt")
    assert any("logit_stand=False" in p for p in _problems({**kd_ls, "hparams": {**kd_ls["hparams"],
                                                                                  "logit_stand": False}}))


def test_one_method_is_checked_at_every_setting_a_file_records():
    """The variants carry their own hparams: a variant moved to another setting fails."""
    catkd = _load(OWN_GOLDEN / "catkd.pt")
    settings = {k: v["hparams"] for k, v in catkd["extra"].items()}
    assert len({tuple(sorted(h.items())) for h in settings.values()} | {(("cam_resolution", 2),)}) == 3
    bad = copy.deepcopy(catkd)
    bad["extra"]["weight2_res3"]["hparams"]["cat_loss_weight"] = 1.0
    assert any(p.startswith("extra.weight2_res3 loss") for p in _problems(bad))


def test_declared_variants_and_outputs_must_be_present():
    catkd = _load(OWN_GOLDEN / "catkd.pt")
    problems = _problems({**catkd, "extra": {k: v for k, v in catkd["extra"].items() if k != "normalized_res4"}})
    assert any("extra.normalized_res4: a variant the entry declares is missing" in p for p in problems)
    dist = _load(OWN_GOLDEN / "dist.pt")
    problems = _problems({**dist, "extra": {k: v for k, v in dist["extra"].items() if k != "inter"}})
    assert any("extra.inter: the declared output dist_inter is missing" in p for p in problems)


def test_a_gradient_the_method_does_not_produce_or_a_trainable_list_that_differs_fails():
    cc = _load(next(p for p in FILES if p.stem == "cc"))
    grads = {**cc["grads"], "params.embed_s.linear.extra": torch.zeros(1)}
    assert any("params.embed_s.linear.extra" in p for p in _problems({**cc, "grads": grads}))
    grads = {**cc["grads"], "feat_t": torch.zeros(1)}  # a teacher input has no gradient
    assert any("grad feat_t: not a student input" in p for p in _problems({**cc, "grads": grads}))
    rrd = _load(next(p for p in FILES if p.stem == "rrd"))  # ours detaches the teacher side, as the reference
    grads = {**rrd["grads"], "params.memory.embed_t.weight": torch.zeros(128, 64, dtype=torch.float64)}
    assert any("embed_t.linear.weight' gets no gradient" in p for p in _problems({**rrd, "grads": grads}))
    state = {**rrd["state_after"], "memory.bogus": torch.zeros(1)}
    problems = _problems({**rrd, "state_after": state})
    assert any("state_after memory.bogus: the method has no buffer" in p for p in problems)
    trainable = [k for k in cc["trainable"] if k != "embed_t.linear.bias"]
    assert any("our 'embed_t.linear.bias' is trainable" in p for p in _problems({**cc, "trainable": trainable}))


def test_the_strong_view_gradient_is_the_strong_views_own():
    mlkd = _load(OWN_GOLDEN / "mlkd.pt")
    grads = mlkd["extra"]["two_views"]["grads"]
    assert not torch.allclose(grads["logit_s"], grads["logit_s_strong"])
    # the weak view's gradient recorded for the strong view fails
    bad = copy.deepcopy(mlkd)
    bad["extra"]["two_views"]["grads"]["logit_s_strong"] = grads["logit_s"].clone()
    assert any(p.startswith("extra.two_views grad logit_s_strong") for p in _problems(bad))


def test_incomplete_files_fail_but_loss_only_records_compare_what_they_hold(tmp_path):
    record = _kd()
    partial = {k: v for k, v in record.items() if k not in ("grads", "state_after", "trainable")}
    torch.save(partial, tmp_path / "kd.pt")
    outcome = golden.check_file(str(tmp_path / "kd.pt"))
    assert not outcome.ok and "not a complete golden file" in outcome.problems[0]
    assert GoldenCase(partial).run().ok  # the training-step tests' records: loss only
    assert not GoldenCase({**partial, "loss": record["loss"] + 1e-3}).run().ok


def test_float64_files_are_compared_at_1e_10_unless_the_entry_says_why():
    for path in FILES:
        record = _load(path)
        case = GoldenCase(record, complete=True)
        entry = case.entry
        assert case.tol == min(float(record["tolerance"]), entry.tolerance)
        assert entry.tolerance <= 1e-10 or entry.tolerance_why, record["method"]
    assert {m for m, e in golden.TABLE.items() if e.tolerance > 1e-10} == {"recall_at_k"}


def test_entries_refuse_ambiguous_declarations():
    with pytest.raises(ValueError, match="both fixed and read"):
        GoldenEntry("kd", {}, options={"kd_T": 4.0}, hparam_options={"kd_T": "T"})
    with pytest.raises(ValueError, match="needs its reason"):
        GoldenEntry("kd", {}, tolerance=1e-6)
    with pytest.raises(ValueError, match="unknown field"):
        GoldenEntry("kd", {}, variants={"v": {"option": {}}})
    assert VARIANT_FIELDS == {"options", "attributes", "unchecked", "inputs_from"}


def test_an_input_read_without_a_gradient_needs_none_and_must_not_be_given_one():
    """DeiT's class-token logits are passed through as the prediction: no gradient on either side. A
    reference gradient for them fails (ours has none); removing the distillation token's fails too."""
    deit = _load(OWN_GOLDEN / "deit_soft.pt")
    assert "logit_cls" in deit["inputs"] and "logit_cls" not in deit["grads"]
    assert GoldenCase(deit, complete=True).run().ok
    given = {**deit, "grads": {**deit["grads"], "logit_cls": torch.zeros_like(deit["inputs"]["logit_cls"])}}
    assert any("logit_cls" in p for p in _problems(given))
    removed = {**deit, "grads": {k: v for k, v in deit["grads"].items() if k != "logit_dist"}}
    assert any("no reference gradient for the student input 'logit_dist'" in p for p in _problems(removed))
