"""Smoke matrix: one real training step of every registered classification method on every family pair.

The pairs are the CIFAR-100 pairs of the literature (results.md §1-2), plus four
cross-architecture pairs on small unmodified timm models (``CROSS_PAIRS``: CNN -> ViT,
ViT -> CNN, ViT -> ViT, CNN -> MLP-Mixer; methods with an ``adapter`` option take
``--adapter auto`` there, and a few cells also run under ``--amp bf16``). For each
(method, pair) cell a :class:`Trainer` is built from command-line flags on
``--dataset synthetic`` (10 classes, one batch of training data) with a teacher of
random weights saved as a checkpoint, and one step goes through ``Trainer.train_step``
(the objective, backward and the optimizer step): the loss and every term must be finite and the
step must change the student's weights. Methods with an initialisation stage
(AB, FT, FSP) take one init-stage step, finish the stage as the trainer does, then
one main-stage step.

Batch: 2 (the smallest BatchNorm trains on), 8 for SemCKD (its MLPs are sized by the
batch and need B/4 >= 2); memory and queue sizes ``--nce_k`` are 2x the batch.

Cells where a method cannot apply are listed in ``INAPPLICABLE`` with the substring
of the error that says why; building the trainer must raise exactly that. Cells that only
the first step's tensors can rule out (FCFD: whether a stage tap's module is that stage,
whether a head sits between the last stage and the pool) are in ``INAPPLICABLE_AT_STEP``:
the trainer builds and its first step must raise that reason. Any other error fails.
``HEAVY`` cells (SemCKD with a ResNet50 teacher: 0.85 billion extra
parameters, ~11.5 GB for one step) run their step only with
``DISTILLERS_SMOKE_HEAVY=1``; their size is checked on the meta device always.

Time: the 12 CIFAR pairs and 4 cross-architecture pairs, every method (some cells inapplicable),
one torch thread (``SMOKE_THREADS`` to change); teachers built once per architecture. Every
cell but the two HEAVY ones runs by default (CI included); none is marked slow except those.
"""
import os
import re
import warnings

import pytest
import torch

import data as datasets
from distillers import build_distiller, list_distillers
from distillers.base import DISTILLERS, ShapeSpec
from engine import cli, config
from engine.config import ConfigError
from engine.checkpoint import save_atomic
from engine.distributed import DistInfo
from engine.plugins import load_plugins
from engine.loop import Trainer
from engine.assembly import shape_spec
from models import create_model
from conftest import REPO

load_plugins([str(REPO / "tests" / "plugins" / "tiny_timm.py")])  # test_vit_t4, test_deit_s8, test_mixer


#: (teacher, student): results.md §1.1/1.2 (same family) and §2 (cross family).
PAIRS = [
    ("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"),
    ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"),
    ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1"),
]
#: Cross-architecture pairs on unmodified timm models (tests/plugins/tiny_timm.py): CNN -> ViT,
#: ViT -> CNN, ViT -> ViT (a distilled DeiT-S with a 4x4 grid and two prefix tokens -> a ViT-T with an
#: 8x8 grid and one), CNN -> MLP-Mixer.
CROSS_PAIRS = [("resnet56", "test_vit_t4"), ("test_vit_t4", "resnet20"), ("test_deit_s8", "test_vit_t4"),
               ("resnet56", "test_mixer")]
#: The metric-learning losses (methods.md §6) train embedding models on metric datasets, not
#: classifiers; a registry entry with ``task="metric"`` metadata is excluded the same way.
METRIC_LEARNING = {"aomd", "contrastive", "darkrank", "metric", "metric_at", "metric_fitnet", "metric_rkd",
                   "metric_sp", "triplet"}


def classification_methods():
    return [name for name in list_distillers() if name not in METRIC_LEARNING
            and DISTILLERS.meta(name).get("task", "classification") == "classification"]


METHODS = classification_methods()
NUM_CLASSES = 10
BATCH = 2
#: Methods that need a larger batch than BATCH.
MIN_BATCH = {"semckd": 8}

_FSP = "FSP needs equal student and teacher channels at every level; "
_SVD = "KDSVD needs equal student and teacher channels per stage; "
#: (method, teacher, student) -> substring of the error that says why it cannot apply.
INAPPLICABLE = {
    ("fsp", "wrn_40_2", "wrn_40_1"): _FSP + "stage1 has 16 (student) vs 32 (teacher) channels",
    ("fsp", "vgg13", "MobileNetV2"): _FSP + "stem has 16 (student) vs 64 (teacher) channels",
    ("fsp", "ResNet50", "MobileNetV2"): _FSP + "stem has 16 (student) vs 64 (teacher) channels",
    ("fsp", "ResNet50", "vgg8"): _FSP + "stage1 has 128 (student) vs 256 (teacher) channels",
    ("fsp", "resnet32x4", "ShuffleV1"): _FSP + "stem has 24 (student) vs 32 (teacher) channels",
    ("fsp", "resnet32x4", "ShuffleV2"): _FSP + "stem has 24 (student) vs 32 (teacher) channels",
    ("fsp", "wrn_40_2", "ShuffleV1"): _FSP + "stem has 24 (student) vs 16 (teacher) channels",
    ("kdsvd", "wrn_40_2", "wrn_40_1"): _SVD + "stage1 has 16 (student) vs 32 (teacher) channels",
    ("kdsvd", "vgg13", "MobileNetV2"): _SVD + "stage1 has 12 (student) vs 128 (teacher) channels",
    ("kdsvd", "ResNet50", "MobileNetV2"): _SVD + "stage1 has 12 (student) vs 256 (teacher) channels",
    ("kdsvd", "ResNet50", "vgg8"): _SVD + "stage1 has 128 (student) vs 256 (teacher) channels",
    ("kdsvd", "resnet32x4", "ShuffleV1"): _SVD + "stage1 has 240 (student) vs 64 (teacher) channels",
    ("kdsvd", "resnet32x4", "ShuffleV2"): _SVD + "stage1 has 116 (student) vs 64 (teacher) channels",
    ("kdsvd", "wrn_40_2", "ShuffleV1"): _SVD + "stage1 has 240 (student) vs 32 (teacher) channels",
    # cross-architecture: FSP and KDSVD compare per-level matrices (channel x channel or position x position)
    # of equal sizes; OFD's margins come from the BatchNorm before a teacher stage's final ReLU, which
    # a ViT does not have
    ("fsp", "resnet56", "test_vit_t4"): "FSP pairs levels one to one: the student has 4 stages, the teacher 3",
    ("fsp", "test_vit_t4", "resnet20"): "FSP pairs levels one to one: the student has 3 stages, the teacher 4",
    ("fsp", "test_deit_s8", "test_vit_t4"): _FSP + "stem has 192 (student) vs 384 (teacher) channels",
    ("fsp", "resnet56", "test_mixer"): "FSP pairs levels one to one: the student has 4 stages, the teacher 3",
    ("kdsvd", "resnet56", "test_vit_t4"): "KDSVD pairs stages one to one: the student has 4 stages, the teacher 3",
    ("kdsvd", "test_vit_t4", "resnet20"): "KDSVD pairs stages one to one: the student has 3 stages, the teacher 4",
    ("kdsvd", "test_deit_s8", "test_vit_t4"): _SVD + "stage1 has 192 (student) vs 384 (teacher) channels",
    ("kdsvd", "resnet56", "test_mixer"): "KDSVD pairs stages one to one: the student has 4 stages, the teacher 3",
    ("ofd", "test_vit_t4", "resnet20"): "OFD computes its margins from the teacher's BatchNorm before each stage's "
                                        "final ReLU (tap group 'stages_bn'), which the teacher does not provide",
    ("ofd", "test_deit_s8", "test_vit_t4"): "OFD computes its margins from the teacher's BatchNorm before each "
                                            "stage's final ReLU (tap group 'stages_bn'), which the teacher does not "
                                            "provide",
}
_FCFD_HEAD = ("fcfd classifies stage{n} through the {side}'s pool and classifier, but stage{n} ({got}) is not the "
              "map they read (last_map, {pooled})")
INAPPLICABLE.update({
    ("fcfd", "vgg13", "MobileNetV2"): _FCFD_HEAD.format(n=4, side="student", got="160x2x2", pooled="1280x2x2"),
    ("fcfd", "ResNet50", "MobileNetV2"): _FCFD_HEAD.format(n=4, side="student", got="160x2x2", pooled="1280x2x2"),
    ("fcfd", "resnet32x4", "ShuffleV2"): _FCFD_HEAD.format(n=3, side="student", got="464x4x4", pooled="1024x4x4"),
})
_FCFD_CHAIN = ("fcfd calls the student's module at stage2's path (ReLU) as its stage 2, but it does not turn stage1 "
               "into stage2")
_FCFD_POOL = "fcfd classifies stage3 through the {side}'s pool and classifier, but the {side}'s pooled vector is not"
#: (method, teacher, student) -> substring of the error its first step raises (the trainer builds).
INAPPLICABLE_AT_STEP = {
    ("fcfd", "wrn_40_2", "wrn_16_2"): _FCFD_POOL.format(side="student"),
    ("fcfd", "wrn_40_2", "wrn_40_1"): _FCFD_POOL.format(side="student"),
    ("fcfd", "wrn_40_2", "ShuffleV1"): _FCFD_POOL.format(side="teacher"),
    ("fcfd", "vgg13", "vgg8"): _FCFD_CHAIN,
    ("fcfd", "ResNet50", "vgg8"): _FCFD_CHAIN,
    ("fcfd", "test_deit_s8", "test_vit_t4"): "fcfd calls the student's module at stage2's path (Block) as its stage 2",
}
#: Cells too large for a CI runner: (method, teacher, student) -> extra trainable parameters
#: (SemCKD regresses every student stage onto every teacher stage through 2*C_t-wide 3x3 convs;
#: with ResNet50's 2048-channel stage that is ~0.85 billion parameters, ~11.5 GB for one SGD step).
HEAVY = {
    ("semckd", "ResNet50", "MobileNetV2"): 848_660_848,
    ("semckd", "ResNet50", "vgg8"): 857_661_808,
}
RUN_HEAVY = os.environ.get("DISTILLERS_SMOKE_HEAVY", "") not in ("", "0")

# DeiT's token method trains a DeiT student's distillation head, which no pair's student has
INAPPLICABLE.update({("deit", t, s): "deit needs a student with a distillation head (module 'head_dist')"
                     for t, s in PAIRS + CROSS_PAIRS})
# ViTKD mimics and regenerates ViT token features, one token to one: both networks must be token models with
# equal patch grids (the distilled DeiT-S has a 4x4 grid, the ViT-T an 8x8 one)
_VITKD = "vitkd needs ViT token features on both sides (the raw outputs of blocks 0 and 1 and the final patch tokens "
_TOKEN_MODELS = ("test_vit_t4", "test_deit_s8", "test_mixer")  # the student is checked first
INAPPLICABLE.update({("vitkd", t, s): _VITKD + "of a timm ViT/DeiT); the " + (
    f"teacher {t} has none" if s in _TOKEN_MODELS else f"student {s} has none") for t, s in PAIRS + CROSS_PAIRS
    if (t, s) != ("test_deit_s8", "test_vit_t4")})
INAPPLICABLE[("vitkd", "test_deit_s8", "test_vit_t4")] = ("vitkd compares tokens one to one: the student has a 8x8 "
                                                          "patch grid, the teacher 4x4")
# FCFD bridges stage K of one network into stage K+1 of the other: equal stage counts only
INAPPLICABLE.update({
    ("fcfd", "resnet56", "test_vit_t4"): "fcfd pairs stages one to one: the student has 4 stages, the teacher 3",
    ("fcfd", "test_vit_t4", "resnet20"): "fcfd pairs stages one to one: the student has 3 stages, the teacher 4",
    ("fcfd", "resnet56", "test_mixer"): "fcfd pairs stages one to one: the student has 4 stages, the teacher 3",
})
CELLS = [(m, t, s) for t, s in PAIRS + CROSS_PAIRS for m in METHODS]


def _cell_id(cell):
    m, t, s = cell
    return f"{m}-{t}-{s}"


def _marks(cell):
    if cell in HEAVY:
        return [pytest.mark.slow, pytest.mark.skipif(
            not RUN_HEAVY, reason=f"{cell[0]} on {cell[1]}->{cell[2]} builds {HEAVY[cell] / 1e6:.0f}M extra "
                                  "parameters (~11.5 GB per step): set DISTILLERS_SMOKE_HEAVY=1")]
    return []


@pytest.fixture(scope="module", autouse=True)
def _threads():
    """Batches of 2-8 on CIFAR models: extra threads buy nothing, and on shared cores
    (CI runners, this machine) spinning OpenMP threads made the matrix ~10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("SMOKE_THREADS", "1")))
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Teacher checkpoints, one per architecture, built on first use.

    Random weights, with BatchNorm statistics taken from one synthetic batch (a fresh
    net in eval mode has unit running variances, so deep ResNets blow features up to
    1e20 and the smoke step would only test float overflow).
    """
    folder = tmp_path_factory.mktemp("teachers")
    paths = {}
    images = None

    def get(arch):
        nonlocal images
        if arch not in paths:
            if images is None:
                train = datasets.build_dataset("synthetic", "", "train", augment=False, train_size=32)
                images = torch.stack([train[i][0] for i in range(len(train))])
            torch.manual_seed(1)
            model = create_model(arch, num_classes=NUM_CLASSES)
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.reset_running_stats()
                    module.momentum = None  # cumulative average over the calibration batch
            model.train()
            with torch.no_grad():
                model(images)
            path = folder / f"{arch}.pth"
            save_atomic({"arch": arch, "model": model.state_dict()}, str(path))
            paths[arch] = str(path)
        return paths[arch]

    return get


def cell_options(cell):
    """Extra flags of a cell: cross-architecture pairs take the generic adapters where a method's
    reference connector has no case for the two shapes (``--adapter auto``)."""
    method, t_arch, s_arch = cell
    if (t_arch, s_arch) in CROSS_PAIRS and "adapter" in DISTILLERS.get(method).option_names():
        return ["--adapter", "auto"]
    return []


def build_trainer(method, teacher_path, student, tmp_path, extra=()):
    batch = MIN_BATCH.get(method, BATCH)
    argv = ["--dataset", "synthetic", "--data_opt", f"train_size={batch}", "--data_opt", "test_size=2",
            "--batch_size", str(batch), "--num_workers", "0", "--no_tensorboard", "--epochs", "1",
            "--model_s", student, "--path_t", teacher_path, "--distill", method, "--save_dir", str(tmp_path),
            *extra]
    if "nce_k" in DISTILLERS.get(method).option_names():
        argv += ["--nce_k", str(2 * batch)]  # memory/queue: a multiple of the batch, smaller than 16384
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no main-stage loss.*")
        return Trainer(config.parse(config.student_parser(), argv), DistInfo(), "student")


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _changed(params, before):
    return sum(not torch.equal(p.detach(), b) for p, b in zip(params, before))


def _step(trainer, optimizer, stage=None):
    """One step of the trainer's loop (``Trainer.train_step``); its loss and terms are finite."""
    trainer.run.model.train()
    if trainer.run.method is not None:
        trainer.run.method.train()
    loss, logits, terms = trainer.train_step(next(iter(trainer.run.train_loader)), optimizer, stage)
    assert torch.isfinite(loss), f"loss {loss.item()}, terms {({k: float(v) for k, v in terms.items()})}"
    for key, value in terms.items():
        assert torch.isfinite(value).all(), f"term {key} is {value}"
    assert logits.shape == (trainer.run.settings.batch_per_rank, NUM_CLASSES)
    return loss


def test_matrix_covers_registry_and_lists_are_consistent():
    built_in = {n for n in list_distillers() if DISTILLERS.get(n).__module__.startswith("distillers.")}
    assert set(METHODS) | METRIC_LEARNING >= built_in  # (plugins registered by other tests are not the zoo's)
    assert len(METHODS) >= 22, METHODS  # the 22 classification methods of methods.md §1-5
    for table in (INAPPLICABLE, INAPPLICABLE_AT_STEP, HEAVY):
        for method, t, s in table:
            assert method in METHODS and (t, s) in PAIRS + CROSS_PAIRS, (method, t, s)
    assert not set(INAPPLICABLE) & set(HEAVY) and not set(INAPPLICABLE_AT_STEP) & (set(INAPPLICABLE) | set(HEAVY))


@pytest.mark.parametrize("cell", [pytest.param(c, id=_cell_id(c), marks=_marks(c)) for c in CELLS])
def test_one_step(cell, teachers, tmp_path):
    method, t_arch, s_arch = cell
    path = teachers(t_arch)
    if cell in INAPPLICABLE:
        # a ConfigError: train_student.py prints it as one line, naming the method and the pair
        with pytest.raises(ConfigError, match=re.escape(INAPPLICABLE[cell])) as err:
            build_trainer(method, path, s_arch, tmp_path, cell_options(cell))
        assert f"--distill {method} with teacher {t_arch} and student {s_arch}" in str(err.value)
        return
    trainer = build_trainer(method, path, s_arch, tmp_path, cell_options(cell))
    try:
        student = list(trainer.run.model.parameters())
        stage = trainer.run.method.init_stage() if trainer.state.phase == "init" else None
        if stage is not None:
            optimizer = trainer.enter_stage(stage)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            before = _snapshot(params)
            _step(trainer, optimizer, stage)
            assert _changed(params, before), f"the {method} init-stage step changed nothing"
        optimizer = trainer.enter_stage(None)
        before = _snapshot(student)
        if cell in INAPPLICABLE_AT_STEP:
            with pytest.raises(ValueError, match=re.escape(INAPPLICABLE_AT_STEP[cell])):
                _step(trainer, optimizer)
            return
        _step(trainer, optimizer)
        assert _changed(student, before), f"the {method} step did not change the student"
    finally:
        for taps in (trainer.stepper.s_taps, trainer.stepper.t_taps):
            if taps is not None:
                taps.close()


def test_inapplicable_cell_is_one_line_on_the_command_line(teachers, tmp_path, capsys):
    method, t_arch, s_arch = cell = ("fsp", "wrn_40_2", "wrn_40_1")
    argv = ["--dataset", "synthetic", "--data_opt", "train_size=2", "--data_opt", "test_size=2", "--batch_size", "2",
            "--num_workers", "0", "--no_tensorboard", "--model_s", s_arch, "--path_t", teachers(t_arch),
            "--distill", method, "--save_dir", str(tmp_path), "--device", "cpu"]
    assert cli.student(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("train_student.py: error: ") and INAPPLICABLE[cell] in err and "Traceback" not in err


def test_cross_architecture_cells_need_the_adapter_only_where_the_reference_has_no_case(teachers, tmp_path):
    """Without ``--adapter auto`` AB and ReviewKD keep their references' one-to-one stage pairing."""
    for method in ("ab", "reviewkd"):
        with pytest.raises(ConfigError, match=re.escape("the student has 4 stages, the teacher 3 (--adapter auto "
                                                        "pairs the deepest 3)")):
            build_trainer(method, teachers("resnet56"), "test_vit_t4", tmp_path / method)


#: Methods whose connectors or maps meet a ViT: FitNet's and AB's connectors (AB's patch expanding from
#: 8x8 to the teacher's 32x32), ReviewKD's fusion, SimKD's projector, the attention, Gram and CAM maps.
BF16_METHODS = ("fitnet", "ab", "at", "reviewkd", "simkd", "ickd", "catkd", "vid", "crd")


@pytest.mark.parametrize("method", BF16_METHODS)
def test_cross_architecture_step_under_bf16_autocast(method, teachers, tmp_path):
    """One step of a CNN -> ViT cell with ``--amp bf16``: the adapters and methods are dtype-safe."""
    cell = (method, "resnet56", "test_vit_t4")
    trainer = build_trainer(method, teachers("resnet56"), "test_vit_t4", tmp_path,
                            cell_options(cell) + ["--amp", "bf16"])
    try:
        stage = trainer.run.method.init_stage() if trainer.state.phase == "init" else None
        optimizer = trainer.enter_stage(stage)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        before = _snapshot(params)
        _step(trainer, optimizer, stage)
        assert _changed(params, before), f"the bf16 {method} step changed nothing"
    finally:
        trainer.stepper.close()


@pytest.mark.parametrize("cell", sorted(HEAVY), ids=_cell_id)
def test_heavy_cells_are_what_they_claim(cell):
    """The HEAVY cells build (on the meta device: no memory) and are as large as recorded."""
    method, t_arch, s_arch = cell
    batch = MIN_BATCH.get(method, BATCH)
    example = torch.zeros(2, 3, 32, 32)
    spec = ShapeSpec(student=shape_spec(create_model(s_arch, num_classes=NUM_CLASSES), example),
                     teacher=shape_spec(create_model(t_arch, num_classes=NUM_CLASSES), example),
                     num_classes=NUM_CLASSES, num_data=batch, batch_size=batch)
    with torch.device("meta"):
        distiller = build_distiller(method, spec)
    assert sum(p.numel() for p in distiller.parameters() if p.requires_grad) == HEAVY[cell]
