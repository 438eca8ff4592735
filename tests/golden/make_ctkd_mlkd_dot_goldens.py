"""Generate tests/golden/{ctkd,mlkd,dot,ctkd_ls,mlkd_ls}.pt from the reference code (see tests/golden/README.md).

    python tests/golden/make_ctkd_mlkd_dot_goldens.py [--ctkd CTKD_DIR] [--mlkd MLKD_DIR] \
        [--mdistiller MDISTILLER_DIR] [--ls LS_DIR] [--out tests/golden]

The directories are checkouts of zhengli97/CTKD, Jin-Ying/Multi-Level-Logit-Distillation,
megvii-research/mdistiller and sunshangquan/logit-standardization-KD (commits below); each one given
writes its files (``--ls``: ctkd_ls.pt from its ``CTKD/`` copy, mlkd_ls.pt from its
``mdistiller/distillers/MLKD.py``). Their code is imported from there, never copied:
packages under private aliases (the references' ``models``/``mdistiller`` names clash with this
project's and with each other), and CTKD's ``CosineDecay``/``LinearDecay`` classes read out of
``train_student.py`` (whose imports need the ImageNet/DALI stack). CPU, float64, fixed seed; ``.cuda()``
is a no-op. Batch 7, 11 classes: odd, so MLKD's median masks keep 4/7 and 6/11, not a half. Every
setting a file is made at is in its ``hparams`` under the reference's names; the ``extra`` variants
carry their own ``hparams``.
"""
import argparse
import ast
import contextlib
import hashlib
import importlib
import importlib.util
import io
import math
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

COMMITS = {
    "ctkd": "zhengli97/CTKD@7d5252241259ae70d38a832371fed9697d15fc14",
    "mlkd": "Jin-Ying/Multi-Level-Logit-Distillation@5ee473fcf193dfb00a0598b64d0acfe6ad58a482",
    "dot": "megvii-research/mdistiller@a08d46f10d6102bd6e3f258ca5ac880b020ea259",
    "ls": "sunshangquan/logit-standardization-KD@f6e5aa5172bad618e801163c3385322eea673754",
}
#: git blob ids, at those commits, of the files imported (checked before anything runs)
BLOBS = {
    "ctkd": {"models/temp_global.py": "1c1459144f01705e7115e17f2e65cfb53f327db5",
             "distiller_zoo/KD.py": "e11a51527b268411f7b5e95ad2b0947dc3e7201a",
             "distiller_zoo/DKD.py": "4a051bf31feaae2f24d3f351b205039c6b7c3f09",
             "helper/loops.py": "2fc215e8f58f4c5978957147b25faca80da11ce2",
             "helper/util.py": "6fed5a616760449f92cc22e58916930e09c7eb9b",
             "train_student.py": "44d63b5f5aee795d08992f896d0aea49c57d3cde"},
    "mlkd": {"mdistiller/distillers/KD_ours.py": "2eedc85c91018bba920834e25c8e3cbfe434682e",
             "mdistiller/distillers/_base.py": "901ddcf9002c725f946a8459dbecc9fe038efe2c"},
    "dot": {"mdistiller/engine/dot.py": "16197810d4f5c4df8c439835eae87e485bf05aae"},
    "ls": {"CTKD/models/temp_global.py": "1c1459144f01705e7115e17f2e65cfb53f327db5",
           "CTKD/distiller_zoo/KD.py": "bd2a0654cb39153f7d5cd1ed676693d21ca90a2a",
           "CTKD/distiller_zoo/DKD.py": "4a051bf31feaae2f24d3f351b205039c6b7c3f09",
           "CTKD/helper/loops.py": "3c09dd9f760a107d03a27ca5e464cd02d7c984dd",
           "CTKD/helper/util.py": "6fed5a616760449f92cc22e58916930e09c7eb9b",
           "CTKD/train_student.py": "56625f710a8921908ef061fe4b026c4de037d1fd",
           "mdistiller/distillers/MLKD.py": "3eaf81965f89e764bb2ba2f7a1faca71646e7ca8",
           "mdistiller/distillers/_base.py": "901ddcf9002c725f946a8459dbecc9fe038efe2c",
           "mdistiller/distillers/loss.py": "fdd22af1aafa2dc560e8324c42d8c888da044ed8"},
}
SEED = 0
B, C = 7, 11


def check_blobs(name: str, root: Path) -> None:
    for rel, expected in BLOBS[name].items():
        data = (root / rel).read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if blob != expected:
            raise SystemExit(f"{root / rel} is not the file of {COMMITS[name]} (blob {blob}, expected {expected})")


def alias_package(alias: str, directory: Path) -> None:
    """Make ``alias.<module>`` import ``directory/<module>.py`` (relative imports work, no __init__ runs)."""
    package = types.ModuleType(alias)
    package.__path__ = [str(directory)]
    sys.modules[alias] = package


def load_file(alias: str, path: Path):
    spec = importlib.util.spec_from_file_location(alias, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module


def class_from_script(path: Path, name: str, namespace: dict):
    """One top-level class of a script whose imports cannot run here, executed from its source."""
    tree = ast.parse(path.read_text(), str(path))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    scope = dict(namespace)
    exec(compile(ast.Module([node], type_ignores=[]), str(path), "exec"), scope)
    return scope[name]


class FixedLogits(nn.Module):
    """A model whose output is a fixed logit tensor (a parameter for the student, so it gets a gradient)."""

    def __init__(self, logits, trainable):
        super().__init__()
        if trainable:
            self.logits = nn.Parameter(logits.clone())
        else:
            self.register_buffer("logits", logits.clone())

    def forward(self, x, is_feat=False):
        return [x], self.logits


# ---------------------------------------------------------------------------- CTKD
class Standardized(nn.Module):
    """A loss module called on the standardisation reference's ``normalize`` of both logits."""

    def __init__(self, loss, normalize):
        super().__init__()
        self.loss, self.normalize = loss, normalize

    def forward(self, logit_s, logit_t, *rest):
        return self.loss(self.normalize(logit_s), self.normalize(logit_t), *rest)


def make_ctkd(root: Path, logit_stand: bool = False):
    """ctkd.pt from zhengli97/CTKD, or (``logit_stand``) ctkd_ls.pt from the logit-standardisation
    fork's copy of it (``root`` = its ``CTKD/`` folder): the same loop with its KD criterion
    ``DistillKL_logit_stand``."""
    name = "ctkd_ls" if logit_stand else "ctkd"
    alias = f"ref_{name}"
    alias_package(f"{alias}_models", root / "models")
    alias_package(f"{alias}_zoo", root / "distiller_zoo")
    alias_package(f"{alias}_helper", root / "helper")
    Global_T = importlib.import_module(f"{alias}_models.temp_global").Global_T
    zoo_kd = importlib.import_module(f"{alias}_zoo.KD")
    DistillKL = zoo_kd.DistillKL
    # the fork's train_student.py: criterion_div = DistillKL() if opt.logit_stand else DistillKL_logit_stand()
    # (inverted: its script, which passes no --logit_stand, runs the standardised one)
    DistillDiv = zoo_kd.DistillKL_logit_stand if logit_stand else DistillKL
    DKDloss = importlib.import_module(f"{alias}_zoo.DKD").DKDloss
    train_distill = importlib.import_module(f"{alias}_helper.loops").train_distill
    decays = {flag: class_from_script(root / "train_student.py", name, {"math": math})
              for flag, name in ((1, "CosineDecay"), (0, "LinearDecay"))}  # train_student.py: opt.cosine_decay
    # the CIFAR script: --distill kd --have_mlp 1 --mlp_name global --t_start 1 --t_end 20 (defaults) --cosine_decay 1
    # --decay_max 0 --decay_min -1 --decay_loops 10
    hp = dict(distill="kd", mlp_name="global", t_start=1.0, t_end=20.0, cosine_decay=1, decay_max=0.0, decay_min=-1.0,
              decay_loops=10.0, lr=0.05, momentum=0.9, weight_decay=5e-4, epoch=3, epoch2=4, dkd_alpha=1.0,
              dkd_beta=2.0, logit_stand=logit_stand)
    #: a second schedule and temperature range (LinearDecay, T in [2, 12])
    other = dict(t_start=2.0, t_end=10.0, cosine_decay=0, decay_loops=5.0)

    g = torch.Generator().manual_seed(SEED)
    logit_s = torch.randn(B, C, generator=g) * 2
    logit_t = [torch.randn(B, C, generator=g) * 3 for _ in range(2)]
    target = [torch.randint(0, C, (B,), generator=g) for _ in range(2)]

    def run(distill, gamma, alpha, beta, epochs, setting=None):
        """The reference's train_distill, one batch per epoch; -> per epoch (inputs, loss, grads, T before)."""
        setting = {**hp, **(setting or {})}
        schedule = decays[setting["cosine_decay"]](max_value=setting["decay_max"], min_value=setting["decay_min"],
                                                   num_loops=setting["decay_loops"])
        student, mlp = FixedLogits(logit_s, True), Global_T()
        opt = SimpleNamespace(distill=distill, gamma=gamma, alpha=alpha, beta=beta, have_mlp=1,
                              t_start=setting["t_start"], t_end=setting["t_end"], kd_T=4, gpu=None,
                              multiprocessing_distributed=False, print_freq=1, batch_size=B,
                              dkd_alpha=hp["dkd_alpha"], dkd_beta=hp["dkd_beta"])
        if distill == "dkd":  # the fork feeds DKD raw logits: standardising them is our composition
            criterion_kd = Standardized(DKDloss(), zoo_kd.normalize) if logit_stand else DKDloss()
        else:
            criterion_kd = DistillKL()
        criteria = nn.ModuleList([nn.CrossEntropyLoss(), DistillDiv(), criterion_kd])
        optimizer = torch.optim.SGD(nn.ModuleList([student, mlp]).parameters(), lr=hp["lr"],
                                    momentum=hp["momentum"], weight_decay=hp["weight_decay"])
        out = []
        for k, epoch in enumerate(epochs):
            teacher = FixedLogits(logit_t[k], False)
            before = {"logit_s": student.logits.detach().clone(), "global_T": mlp.global_T.detach().clone()}
            loader = [(torch.zeros(B, 1), target[k])]
            with contextlib.redirect_stdout(io.StringIO()):
                _, _, loss, _ = train_distill(epoch, loader, nn.ModuleList([student, teacher]), mlp,
                                              schedule.get_value(epoch), criteria, optimizer, opt)
            grads = {"logit_s": student.logits.grad.clone(), "params.global_T": mlp.global_T.grad.clone()}
            inputs = {"logit_s": before["logit_s"], "logit_t": logit_t[k], "target": target[k],
                      "epoch": torch.tensor(float(epoch))}
            out.append((inputs, torch.tensor(loss), grads, before["global_T"], schedule.get_value(epoch)))
        return out

    # -r 0 -a 1 -b 0: the loss is the KD term at the learned temperature alone
    (inputs, loss, grads, theta, lam), (inputs2, loss2, grads2, _, lam2) = run("kd", 0.0, 1.0, 0.0,
                                                                             [hp["epoch"], hp["epoch2"]])
    # -r 0 -a 0 -b 1 --distill dkd: DKD at the learned temperature alone, same first batch
    (_, loss_dkd, grads_dkd, _, _), = run("dkd", 0.0, 0.0, 1.0, [hp["epoch"]])
    if grads_dkd["params.global_T"].isnan().all():  # 0 * log 0 in its probability-space KL: not comparable
        del grads_dkd["params.global_T"]
    # the other schedule and range, at the first epoch (KD)
    (_, loss_other, grads_other, _, _), = run("kd", 0.0, 1.0, 0.0, [hp["epoch"]], other)
    if logit_stand:
        reference = (f"{COMMITS['ls']} CTKD/models/temp_global.py Global_T + CTKD/distiller_zoo/KD.py "
                     "DistillKL_logit_stand (dkd_base: DKD.py DKDloss on KD.py normalize, our composition) + "
                     "CTKD/helper/loops.py train_distill + CTKD/train_student.py CosineDecay, LinearDecay")
    else:
        reference = (f"{COMMITS['ctkd']} models/temp_global.py Global_T + distiller_zoo/KD.py DistillKL "
                     "(DKD.py DKDloss) + helper/loops.py train_distill + train_student.py CosineDecay, LinearDecay")
    notes = ("One batch per epoch through the reference's own train_distill with mock models "
             "returning fixed logits (the student's are a parameter). loss = the KD term at the "
             "learned T (-r 0 -a 1 -b 0); grads.params.global_T is the reversed gradient "
             "(lambda = CosineDecay(0, -1, 10).get_value(epoch) < 0). step2: the next epoch after "
             "the reference's SGD step (lr 0.05, momentum 0.9, wd 5e-4; its first step, so the "
             "update is lr (g + wd theta)); its logit_s input is the student's logits after that "
             "step. dkd_base: --distill dkd -r 0 -a 0 -b 1 --dkd_beta 2 at the first epoch; its temperature "
             "gradient is NaN in the reference (the masked teacher probability of the target class "
             "underflows to 0 and the KL's target-side derivative log 0 + 1 meets d p / d T = 0), so "
             "only loss and logit_s are recorded for it. linear_t2_10_loops5: --t_start 2 --t_end 10 "
             "--cosine_decay 0 --decay_loops 5 (LinearDecay) at the first epoch, KD.")
    if logit_stand:
        notes = ("Logit standardisation: the fork's CTKD with its KD criterion DistillKL_logit_stand (normalize "
                 "both logits, then KD at the learned T), the criterion its CIFAR script runs (train_student.py "
                 "picks it when --logit_stand is absent; the script passes none). The script's -a 9 (KD weight) "
                 "is not applied and its --kd_T 2 is not read with --have_mlp 1; t_start 1, t_end 20 and the "
                 "decay are the script's. dkd_base is our composition: the fork feeds its DKDloss raw logits, "
                 "here it gets KD.py's normalize of both (as the fork's mdistiller DKD with --logit-stand). " + notes)
    return {
        "method": name,
        "reference": reference,
        "hparams": hp, "inputs": inputs, "params": {"global_T": theta}, "trainable": ["global_T"],
        "loss": loss, "grads": grads, "state_after": {},
        "extra": {
            "step2": {"inputs": inputs2, "loss": loss2, "grads": grads2,
                      "sgd": {"lr": hp["lr"], "momentum": hp["momentum"], "weight_decay": hp["weight_decay"]}},
            "dkd_base": {"hparams": {"distill": "dkd"}, "loss": loss_dkd, "grads": grads_dkd},
            "linear_t2_10_loops5": {"hparams": other, "loss": loss_other, "grads": grads_other},
            "lambda": torch.tensor([lam, lam2]),
            "temperature": hp["t_start"] + hp["t_end"] * torch.sigmoid(theta),
        },
        "notes": notes,
    }


# ---------------------------------------------------------------------------- MLKD
def make_mlkd(root: Path, logit_stand: bool = False):
    """mlkd.pt from Jin-Ying/Multi-Level-Logit-Distillation, or (``logit_stand``) mlkd_ls.pt from the
    logit-standardisation fork's ``mdistiller/distillers/MLKD.py`` with LOGIT_STAND true and TEMPERATURE 2."""
    if logit_stand:
        try:  # MLKD.py's first lines import termios.CEOL and turtle.st, neither used; turtle needs Tk
            import turtle  # noqa: F401
        except ImportError:
            sys.modules["turtle"] = types.ModuleType("turtle")
            sys.modules["turtle"].st = None
        alias_package("ref_mlkd_ls", root / "mdistiller" / "distillers")
        KD_ours = importlib.import_module("ref_mlkd_ls.MLKD").MLKD
        temperature = 2.0
    else:
        alias_package("ref_mlkd", root / "mdistiller" / "distillers")
        KD_ours = importlib.import_module("ref_mlkd.KD_ours").KD_ours
        temperature = 4.0
    def cfg(temperature):
        return SimpleNamespace(KD=SimpleNamespace(TEMPERATURE=temperature,
                                                  LOSS=SimpleNamespace(CE_WEIGHT=0.1, KD_WEIGHT=1.0)),
                               EXPERIMENT=SimpleNamespace(LOGIT_STAND=logit_stand))

    g = torch.Generator().manual_seed(SEED + 1)
    weak_s, weak_t = torch.randn(B, C, generator=g) * 2, torch.randn(B, C, generator=g) * 3
    strong_s, strong_t = torch.randn(B, C, generator=g) * 2, torch.randn(B, C, generator=g) * 3
    target = torch.randint(0, C, (B,), generator=g)

    class ByImage(nn.Module):
        """The image tensor selects the view: 0 = weak, 1 = strong."""

        def __init__(self, views):
            super().__init__()
            self.views = views

        def forward(self, image):
            return self.views[int(image.reshape(-1)[0])], None

    def run(views_s, views_t, strong_image, temp=temperature):
        leaves = [v.clone().requires_grad_(True) for v in views_s]
        distiller = KD_ours(ByImage(leaves), ByImage(views_t), cfg(temp))
        distiller.train()
        weak, strong = torch.zeros(B, 1), torch.full((B, 1), float(strong_image))
        _, losses = distiller.forward_train(image_weak=weak, image_strong=strong, target=target)
        loss = losses["loss_kd"] + losses["loss_cc"] + losses["loss_bc"]
        loss.backward()
        terms = {k: losses[k].detach() for k in ("loss_kd", "loss_cc", "loss_bc")}
        return loss.detach(), [leaf.grad for leaf in leaves], terms

    # one view: the strong image is the weak one (the single-view data path)
    loss, (grad_s, _), terms = run([weak_s, strong_s], [weak_t, strong_t], strong_image=0)
    loss2, (grad_weak, grad_strong), terms2 = run([weak_s, strong_s], [weak_t, strong_t], strong_image=1)
    variants = {"two_views": {"inputs": {"logit_s_strong": strong_s, "logit_t_strong": strong_t},
                              "loss": loss2, "grads": {"logit_s": grad_weak, "logit_s_strong": grad_strong}, **terms2}}
    if not logit_stand:  # a second TEMPERATURE (the LS fork's base temperature), one view
        loss3, (grad3, _), terms3 = run([weak_s, strong_s], [weak_t, strong_t], strong_image=0, temp=2.0)
        variants["temperature2"] = {"hparams": {"temperature": 2.0}, "loss": loss3, "grads": {"logit_s": grad3},
                                    **terms3}
    notes = ("forward_train of the reference on mock student/teacher returning fixed logits per view, "
             "KD.LOSS.KD_WEIGHT 1 (reference 0.9) so the loss is unweighted; loss = loss_kd + loss_cc + "
             "loss_bc (loss_ce left out). Main record: image_strong = image_weak (one view). "
             "extra.two_views: distinct strong logits; the reference's strong KD at T 2 and 6 reads the "
             "weak logits, and its strong cc/bc terms are computed but not returned. level_temperatures: the four "
             "temperatures forward_train hard-codes after TEMPERATURE.")
    if logit_stand:
        reference = f"{COMMITS['ls']} mdistiller/distillers/MLKD.py MLKD.forward_train (kd_loss, cc_loss, bc_loss)"
        hparams = {"temperature": 2.0, "level_temperatures": [3.0, 5.0, 2.0, 6.0], "kd_weight": 1.0,
                   "logit_stand": True,
                   "kd_weight_reference": 9.0, "ce_weight_reference": 0.1,
                   "recipe": "configs/cifar100/mlkd/<pair>.yaml --logit-stand --base-temp 2 --kd-weight 9 "
                             "(TEMPERATURE 2, KD_WEIGHT 9; kd_weight not applied here)"}
        notes = ("Logit standardisation: the fork's MLKD with EXPERIMENT.LOGIT_STAND true and KD.TEMPERATURE 2 (its "
                 "--base-temp); LOGIT_STAND reaches kd_loss only, so loss_kd is on normalize(z) and loss_cc, loss_bc "
                 "and the masks are on the raw logits. " + notes.replace("KD_WEIGHT 1 (reference 0.9)",
                                                                        "KD_WEIGHT 1 (recipe 9)"))
    else:
        reference = (f"{COMMITS['mlkd']} mdistiller/distillers/KD_ours.py KD_ours.forward_train "
                     "(kd_loss, cc_loss, bc_loss)")
        hparams = {"temperature": 4.0, "level_temperatures": [3.0, 5.0, 2.0, 6.0], "kd_weight": 1.0,
                   "logit_stand": False,
                   "kd_weight_reference": 0.9, "ce_weight_reference": 0.1}
        notes += " extra.temperature2: TEMPERATURE 2 (one view)."
    return {
        "method": "mlkd_ls" if logit_stand else "mlkd",
        "reference": reference,
        "hparams": hparams,
        "inputs": {"logit_s": weak_s, "logit_t": weak_t}, "params": {}, "trainable": [],
        "loss": loss, "grads": {"logit_s": grad_s}, "state_after": {},
        "extra": {**terms, **variants},
        "notes": notes,
    }


# ---------------------------------------------------------------------------- DOT
def make_dot(root: Path):
    DOT = load_file("ref_mdistiller_dot", root / "mdistiller" / "engine" / "dot.py").DistillationOrientedTrainer
    hp = {"lr": 0.1, "momentum": 0.9, "delta": 0.075, "weight_decay": 5e-4, "steps": 3}
    g = torch.Generator().manual_seed(SEED + 2)
    n, d, h, classes, f = 6, 5, 4, 3, 2
    inputs = {"x": torch.randn(n, d, generator=g), "y": torch.randint(0, classes, (n,), generator=g),
              "feat_t": torch.randn(n, f, generator=g),
              "w_shared": torch.randn(h, d, generator=g) * 0.5, "b_shared": torch.randn(h, generator=g) * 0.5,
              "w_task": torch.randn(classes, h, generator=g) * 0.5, "w_kd": torch.randn(f, h, generator=g) * 0.5}
    params = [nn.Parameter(inputs[k].clone()) for k in ("w_shared", "b_shared", "w_task", "w_kd")]
    # mdistiller/engine/trainer.py DOT.init_optimizer
    opt = DOT(params, lr=hp["lr"], momentum=hp["momentum"] - hp["delta"], momentum_kd=hp["momentum"] + hp["delta"],
              weight_decay=hp["weight_decay"])
    losses, trajectory = [], []
    for _ in range(hp["steps"]):
        hidden = torch.tanh(inputs["x"] @ params[0].t() + params[1])
        loss_task = F.cross_entropy(hidden @ params[2].t(), inputs["y"])
        loss_kd = F.mse_loss(hidden @ params[3].t(), inputs["feat_t"])
        # mdistiller/engine/trainer.py DOT.train_iter
        opt.zero_grad(set_to_none=True)
        loss_kd.backward(retain_graph=True)
        opt.step_kd()
        opt.zero_grad(set_to_none=True)
        loss_task.backward()
        opt.step()
        losses.append(torch.stack([loss_task.detach(), loss_kd.detach()]))
        trajectory.append([p.detach().clone() for p in params])
    return {
        "method": "dot",
        "reference": f"{COMMITS['dot']} mdistiller/engine/dot.py DistillationOrientedTrainer "
                     "(built and stepped as mdistiller/engine/trainer.py DOT does)",
        "hparams": hp, "inputs": inputs, "params": {}, "trainable": [],
        "loss": torch.stack(losses), "grads": {}, "state_after": {},
        "extra": {"params": trajectory,
                  "momentum_buffer": [opt.state[p]["momentum_buffer"].clone() for p in params[:3]],
                  "momentum_kd_buffer": [opt.state[p]["momentum_kd_buffer"].clone()
                                         for p in (params[0], params[1], params[3])]},
        "notes": "An optimiser, not a loss. Tiny model h = tanh(x w_shared^T + b_shared), task loss "
                 "CE(h w_task^T, y), distillation loss MSE(h w_kd^T, feat_t); momentum 0.9 -/+ delta 0.075. "
                 "loss = [steps, 2] (task, distillation) before each update; extra.params = [w_shared, "
                 "b_shared, w_task, w_kd] after each update; buffers after the last update: "
                 "momentum_buffer of (w_shared, b_shared, w_task), momentum_kd_buffer of (w_shared, b_shared, w_kd).",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ctkd", type=Path, help="zhengli97/CTKD checkout (ctkd.pt)")
    parser.add_argument("--mlkd", type=Path, help="Jin-Ying/Multi-Level-Logit-Distillation checkout (mlkd.pt)")
    parser.add_argument("--mdistiller", type=Path, help="megvii-research/mdistiller checkout (dot.pt)")
    parser.add_argument("--ls", type=Path,
                        help="sunshangquan/logit-standardization-KD checkout (ctkd_ls.pt, mlkd_ls.pt)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    given = [(name, root) for name, root in (("ctkd", args.ctkd), ("mlkd", args.mlkd), ("dot", args.mdistiller),
                                             ("ls", args.ls)) if root is not None]
    if not given:
        parser.error("give at least one of --ctkd, --mlkd, --mdistiller, --ls")

    for name, root in given:
        check_blobs(name, root)
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(SEED)
    torch.Tensor.cuda = lambda self, *a, **k: self  # the references call .cuda() on CPU tensors
    nn.Module.cuda = lambda self, *a, **k: self
    common = {"dtype": "float64", "split": "public", "seed": SEED, "torch_version": str(torch.__version__),
              "tolerance": 1e-10}
    makers = {"ctkd": lambda root: [make_ctkd(root)], "mlkd": lambda root: [make_mlkd(root)],
              "dot": lambda root: [make_dot(root)],
              "ls": lambda root: [make_ctkd(root / "CTKD", logit_stand=True), make_mlkd(root, logit_stand=True)]}
    for record in (r for name, root in given for r in makers[name](root)):
        record = {**common, **record}
        path = args.out / f"{record['method']}.pt"
        torch.save(record, path)
        print(f"wrote {path}: loss {record['loss'].reshape(-1)[:4].tolist()}")


if __name__ == "__main__":
    main()
