"""configs/cifar100/: one YAML per published CIFAR-100 cell, written by scripts/make_configs.py.

Every file must load through the trainer's own parser, every published cell of a method we run
must have its file (or a stated reason why not), the committed files must be what the generator
writes, and the values must be the references' (spot-checked against numbers read off the
reference repositories, and equal to the registry's documented defaults wherever a reference
uses the default).
"""
import glob
import os
import sys
import warnings

import pytest

from conftest import REPO, SHARED
from distillers.base import DISTILLERS
from engine import config
from engine.results import published

sys.path.insert(0, str(REPO / "scripts"))
import make_configs  # noqa: E402

CONFIGS = sorted(glob.glob(str(REPO / "configs" / "cifar100" / "*" / "*.yaml")))


def load(path):
    return config.parse(config.student_parser(), ["--config", path])


def values(args):
    """The flag values a config set: model, weights and method options (``kd_T`` and ``logit_std`` are
    options of the KD term too, whichever way the parser files them)."""
    out = {k: getattr(args, k) for k in ("distill", "model_s", "model_t", "dataset", "gamma", "alpha", "beta",
                                         "dot", "dot_delta")}
    if getattr(args, "kd_T", None) is not None:
        out["kd_T"] = args.kd_T
    out.update(config.method_options(args))
    return out


def test_there_are_configs():
    assert len(CONFIGS) >= 250


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO / "configs" / "cifar100"))
def test_every_config_loads_through_the_student_parser(path):
    args = load(path)
    folder, name = os.path.basename(os.path.dirname(path)), os.path.basename(path)[:-len(".yaml")]
    row = next(r for r in make_configs.ROWS.values() if r.folder == folder)
    assert args.distill == row.distill
    assert f"{args.model_t}_{args.model_s}" == name and args.path_t is None  # the teacher path is per user
    got = values(args)
    for key, value in published.settings(row.label, (args.model_t, args.model_s)).items():
        assert got[key] == value, (key, got[key], value)
    # every key is a flag of this method (or a common flag): nothing is silently ignored
    options = set(DISTILLERS.get(row.distill).all_options()) | set(DISTILLERS.get("kd").all_options())
    assert set(config.method_options(args)) <= options


def test_the_command_line_wins_over_a_config():
    path = str(REPO / "configs" / "cifar100" / "kd_ls" / "resnet32x4_resnet8x4.yaml")
    args = config.parse(config.student_parser(), ["--config", path, "--kd_T", "3", "-a", "1"])
    assert (values(args)["kd_T"], args.alpha, args.gamma) == (3.0, 1.0, 0.1)


def test_every_published_cell_has_a_config_or_a_reason():
    flags = make_configs.student_flags()
    written, left_out = 0, []
    for label, row in published.PUBLISHED.items():
        if label in published.NOT_IMPLEMENTED:
            continue
        assert label in make_configs.ROWS, f"results.md row {label} is neither run nor listed as not implemented"
        spec = make_configs.ROWS[label]
        for pair in row:
            path = make_configs.config_path(label, pair)
            if spec.blocked or make_configs.missing_flags(spec, flags):
                assert not os.path.exists(path), path
                left_out.append((label, pair))
            else:
                assert os.path.isfile(path), f"published cell {label} {pair} has no config {path}"
                written += 1
    for label, pair in published.EXTRA_CELLS:
        assert os.path.isfile(make_configs.config_path(label, pair))
    assert written + len(published.EXTRA_CELLS) == len(CONFIGS)
    # the published cells this project runs: §1.1 (20 rows x 7 pairs, FSP N/A on wrn-40-2->wrn-40-1)
    # minus Teacher/Student, §1.2's implemented rows, §2 and the two side lines
    assert written >= 250
    blocked = {label for label, _ in left_out}
    assert blocked <= {"KD+DOT", "ViTKD"}  # ViTKD's cells are ImageNet-1k ones, with a recipe the trainer lacks
    # new methods with a published CIFAR-100 cell
    for label in ("OFD", "DIST", "KD+CTKD", "KD+LS", "DKD+LS", "CTKD+LS", "MLKD", "MLKD+LS"):
        assert any(os.path.isfile(make_configs.config_path(label, p)) for p in published.PUBLISHED[label])


def test_committed_configs_are_what_the_generator_writes(capsys):
    assert make_configs.main(["--check"]) == 0, capsys.readouterr().out


def test_values_are_the_registry_defaults_where_the_reference_uses_them():
    for path in CONFIGS:
        args = load(path)
        folder = os.path.basename(os.path.dirname(path))
        row = next(r for r in make_configs.ROWS.values() if r.folder == folder)
        cls = DISTILLERS.get(row.distill)
        pair = (args.model_t, args.model_s)
        overridden = set(row.options) | set(row.weights) | set(row.per_pair(pair) if row.per_pair else {})
        for key in ("gamma", "alpha", "beta"):
            if key not in overridden:
                assert getattr(args, key) == cls.default_weights[key], (path, key)
        for key, default in cls.all_options().items():
            if key in overridden or key in row.skip or default is None:
                continue
            got = values(args)[key]
            assert got == (list(default) if isinstance(default, tuple) else default), (path, key)


# numbers read off the reference repositories (not from the generator's table)
REFERENCE_VALUES = [
    ("kd/resnet32x4_resnet8x4", {"gamma": 0.1, "alpha": 0.9, "beta": 0.0, "kd_T": 4.0}),     # RepDistiller
    ("crd/resnet32x4_resnet8x4", {"gamma": 1.0, "alpha": 0.0, "beta": 0.8, "nce_k": 16384}),
    ("crd_kd/vgg13_MobileNetV2", {"gamma": 1.0, "alpha": 1.0, "beta": 0.8}),
    ("fitnet/wrn_40_2_wrn_16_2", {"beta": 100.0, "hint_layer": 2}),
    ("dkd/resnet56_resnet20", {"gamma": 1.0, "dkd_alpha": 1.0, "dkd_beta": 2.0, "kd_T": 4.0, "warmup": 20}),
    ("dkd/wrn_40_2_wrn_40_1", {"dkd_beta": 6.0}),                                           # mdistiller configs
    ("dkd/vgg13_MobileNetV2", {"dkd_beta": 6.0}),
    ("dkd/resnet32x4_resnet8x4", {"dkd_beta": 8.0}),
    ("dkd/ResNet50_MobileNetV2", {"dkd_beta": 8.0}),
    ("dkd_ls/resnet32x4_resnet8x4", {"dkd_alpha": 9.0, "dkd_beta": 72.0, "kd_T": 2.0, "logit_std": True}),
    ("dkd_ls/resnet110_resnet32", {"dkd_alpha": 9.0, "dkd_beta": 18.0, "kd_T": 2.0}),
    ("kd_ls/vgg13_vgg8", {"gamma": 0.1, "alpha": 9.0, "kd_T": 2.0, "logit_std": True}),    # --kd-weight 9 --base-temp 2
    ("dist/resnet32x4_ShuffleV2", {"gamma": 1.0, "beta": 2.0, "dist_tau": 4.0, "dist_beta": 1.0, "dist_gamma": 1.0}),
    ("ofd/resnet56_resnet20", {"gamma": 1.0, "alpha": 0.0, "beta": 0.001, "ofd_kernel": 1}),
    ("ctkd/resnet56_resnet20", {"gamma": 0.1, "alpha": 0.0, "beta": 0.9, "t_start": 1.0, "t_end": 20.0,
                                "decay_min": -1.0, "decay_loops": 10.0, "cosine_decay": 1, "mlp_name": "global"}),
    ("ctkd_ls/resnet56_resnet20", {"gamma": 0.1, "alpha": 0.0, "beta": 9.0, "logit_std": True,  # LS fork's
                                   "ctkd_base": "kd", "mlp_name": "global", "t_start": 1.0, "t_end": 20.0,  # CTKD/
                                   "decay_max": 0.0, "decay_min": -1.0, "decay_loops": 10.0, "cosine_decay": 1}),
    ("ctkd/resnet32x4_resnet8x4", {"logit_std": False}),
    ("mlkd/resnet32x4_resnet8x4", {"gamma": 0.1, "alpha": 0.0, "beta": 0.9, "kd_T": 4.0,       # KD_ours cfg
                                   "mlkd_T": [3.0, 5.0, 2.0, 6.0], "logit_std": False}),
    ("mlkd_ls/vgg13_MobileNetV2", {"gamma": 0.1, "alpha": 0.0, "beta": 9.0, "kd_T": 2.0,      # LS fork's MLKD
                                   "mlkd_T": [3.0, 5.0, 2.0, 6.0], "logit_std": True}),      # --kd-weight 9
    ("catkd/resnet32x4_resnet8x4", {"cat_weight": 15.0, "cam_resolution": 2, "cam_normalize": False}),
    ("catkd/resnet32x4_ShuffleV1", {"cat_weight": 600.0, "cam_resolution": 4, "cam_normalize": True}),
    ("catkd/ResNet50_MobileNetV2", {"cat_weight": 40.0, "cam_resolution": 2, "cam_normalize": True}),
    ("reviewkd/resnet32x4_resnet8x4", {"reviewkd_weight": 5.0, "warmup": 20}),             # ReviewKD's script
    ("reviewkd/resnet56_resnet20", {"reviewkd_weight": 0.6}),
    ("reviewkd/resnet110_resnet32", {"reviewkd_weight": 1.0}),
    ("reviewkd/resnet32x4_ShuffleV2", {"reviewkd_weight": 8.0}),
]


@pytest.mark.parametrize("name,expected", REFERENCE_VALUES, ids=[n for n, _ in REFERENCE_VALUES])
def test_reference_values(name, expected):
    got = values(load(str(REPO / "configs" / "cifar100" / f"{name}.yaml")))
    assert {k: got[k] for k in expected} == expected


def test_published_numbers_are_results_md():
    """The built-in copy of results.md §1-2 (engine/results/published.py) equals the shared file."""
    path = SHARED / "reference" / "results.md"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    reference = published.read_reference(str(path))
    checked = 0
    for label, row in published.PUBLISHED.items():
        for pair, (value, _source) in row.items():
            if pair in reference.get(label, {}):
                assert reference[label][pair] == value, (label, pair)
                checked += 1
    assert checked >= 300
    text = path.read_text(encoding="utf-8")
    for pair, line in (published.LINE_R110_R20, published.LINE_WRN_MV2):
        for label, (value, _) in line.items():
            assert f"{label} {value:.2f}" in text, (label, pair, value)


def _teacher(tmp_path, arch):
    import torch

    from engine.checkpoint import save_atomic
    from models import create_model

    torch.manual_seed(0)
    path = tmp_path / f"{arch}.pth"
    save_atomic({"arch": arch, "model": create_model(arch, num_classes=10).state_dict()}, str(path))
    return str(path)


def test_a_config_of_every_folder_builds_a_trainer(tmp_path):
    """Each method folder's resnet32x4 -> resnet8x4 file (else its first) builds a trainer: the
    options are values the method accepts (synthetic data, 10 classes, small memories)."""
    import torch

    from engine.distributed import DistInfo
    from engine.loop import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    teachers = {}
    try:
        for folder in sorted({os.path.basename(os.path.dirname(p)) for p in CONFIGS}):
            paths = sorted(glob.glob(str(REPO / "configs" / "cifar100" / folder / "*.yaml")))
            path = next((p for p in paths if p.endswith("resnet32x4_resnet8x4.yaml")), paths[0])
            args = load(path)
            if args.model_t not in teachers:
                teachers[args.model_t] = _teacher(tmp_path, args.model_t)
            argv = ["--config", path, "--path_t", teachers[args.model_t], "--dataset", "synthetic",
                    "--data_opt", "train_size=8", "--data_opt", "test_size=2", "--batch_size", "8",
                    "--num_workers", "0", "--no_tensorboard", "--epochs", "1", "--save_dir", str(tmp_path / folder)]
            if "nce_k" in DISTILLERS.get(args.distill).option_names():
                argv += ["--nce_k", "16"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer = Trainer(config.parse(config.student_parser(), argv), DistInfo(), "student")
            assert isinstance(trainer.run.method, DISTILLERS.get(args.distill)), folder
            expected = {k: v for k, v in values(args).items() if k not in ("distill", "model_s", "model_t", "dataset",
                                                                           "gamma", "alpha", "beta", "kd_T", "nce_k",
                                                                           "dot", "dot_delta")}
            if args.dot:  # an optimiser option: the trainer's optimiser is DOT with that delta
                assert type(trainer.run.optimizer).__name__ == "DistillationOrientedTrainer", folder
                assert trainer.run.optimizer.defaults["delta"] == args.dot_delta
            for key, value in expected.items():
                assert getattr(trainer.run.method, key) == (tuple(value) if isinstance(value, list) else value), \
                    (folder, key)
    finally:
        torch.set_num_threads(threads)
