"""Miles & Mikolajczyk, "Understanding the Role of the Projector in Knowledge Distillation" (SRD, AAAI 2024)."""
import torch
import torch.nn.functional as F
from torch import nn

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._memory import pooled_dim
from distillers.reference import GoldenEntry, register_golden


@register_distiller("srd")
class SRD(Distiller):
    """Understanding the Role of the Projector in Knowledge Distillation (SRD, Miles & Mikolajczyk,
    AAAI 2024): a linear projector and batch normalisation on the pooled features, a log-sum of
    powered differences, plus a KL term on the logits.

    Follows torchdistill's official config ``configs/official/ilsvrc2012/roymiles/aaai2024``
    (yoshitomo-matsubara/torchdistill@3e4373c ``torchdistill/models/wrapper.py`` ``SRDModelWrapper``,
    ``torchdistill/losses/mid_level.py`` ``SRDLoss``), a port of roymiles/Simple-Recipe-Distillation@31e8477
    ``imagenet/torchdistill/losses/single.py`` ``OurDistillationLoss``. The student's pooled vector
    goes through ``projector`` (linear, student width -> teacher width) and ``norm_s``, the teacher's
    through ``norm_t``: batch norms without affine parameters, eps 1e-4, in training mode (batch
    statistics; their running statistics are buffers). Terms: ``srd_feature`` = 2 * log(sum
    |norm_s(W z_s) - norm_t(z_t)|^``srd_exponent``), ``srd_logit`` = KL(teacher || student) of the
    softmaxes at ``srd_T``, batch mean (torchdistill's ``KLDivLoss(reduction='batchmean')``, with no
    T^2 factor; the author's code multiplies by T^2, the same at its T = 1).

    The code is followed (the paper's equations were not at hand to compare line by line): both
    references fix the feature weight 2 and add the logit KL term inside the loss; they pool the
    last stage themselves (here: the ``pooled`` tap, the classifier's input); torchdistill's port
    drops the author's T^2 factor. Defaults: exponent 4, T 1, CE 1, this loss 1 (the ImageNet
    config; no CIFAR-100 setting is published).
    """

    display_name = "SRD"  # its row in published tables
    student_taps = ("pooled", "logits")
    teacher_taps = ("pooled", "logits")
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "srd_exponent": Option(4.0, "power of the absolute differences of the normalised features (the "
                                    "config's exponent)", above=0),
        "srd_T": Option(1.0, "temperature of the logit KL term (the config's temperature)", above=0),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        s_dim, t_dim = pooled_dim(spec.student, "student", "srd"), pooled_dim(spec.teacher, "teacher", "srd")
        self.projector = nn.Linear(s_dim, t_dim)
        self.norm_s = nn.BatchNorm1d(t_dim, eps=1e-4, affine=False)
        self.norm_t = nn.BatchNorm1d(t_dim, eps=1e-4, affine=False)

    def forward(self, s, t, batch=None):
        z_s = self.norm_s(self.projector(s["pooled"].flatten(1)))
        z_t = self.norm_t(t["pooled"].flatten(1))
        feature = 2.0 * torch.log((z_s - z_t).abs().pow(self.srd_exponent).sum())
        logit = F.kl_div(F.log_softmax(s["logits"] / self.srd_T, dim=1), F.softmax(t["logits"] / self.srd_T, dim=1),
                         reduction="batchmean")
        return {"srd_feature": feature, "srd_logit": logit}


# The reference numbers this method reproduces (python -m distillers.golden; tests/golden).
register_golden("srd", GoldenEntry(
    "srd", {"feat_s": "s:pooled", "feat_t": "t:pooled", "logit_s": "s:logits", "logit_t": "t:logits"},
    hparam_options={"srd_exponent": "exponent", "srd_T": "temperature"},
    hparam_fixed={"eps": 1e-4},  # the batch norms' eps, built in
    hparam_info=("s_dim", "t_dim"),  # the widths, which the inputs give
    # the author's OurDistillationLoss (roymiles/Simple-Recipe-Distillation) on the same tensors: the loss of
    # the reference this method follows (torchdistill's port), from another repository, as a cross-check
    diagnostics=("simple_recipe",)))
