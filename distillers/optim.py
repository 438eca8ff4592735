"""Zhao et al., "DOT: A Distillation-Oriented Trainer" (ICCV 2023), as in mdistiller
``mdistiller/engine/dot.py`` (``DistillationOrientedTrainer``).

An optimiser, not a loss: SGD whose momentum is split by the loss a gradient comes from. The
task-loss (CE) gradients run with momentum ``momentum - delta``, the distillation-loss
gradients with ``momentum + delta`` (delta 0.075, momentum 0.9 in mdistiller's CIFAR-100
configs ``configs/cifar100/dot``), each in its own buffer, and the parameter takes both steps.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim import Optimizer
from distillers.reference import GoldenEntry, register_golden


class DistillationOrientedTrainer(Optimizer):
    """SGD with separate momenta for the task and the distillation gradients.

    Use (the reference's two-step API)::

        opt.zero_grad(set_to_none=True)
        loss_distill.backward(retain_graph=True)
        opt.step_kd()                 # keeps the distillation gradients (copies)
        opt.zero_grad(set_to_none=True)
        loss_task.backward()
        opt.step()                    # task gradients in .grad, then both updates

    or ``opt.step_with(task_grads, distill_grads)`` with two gradient lists aligned with the
    parameters of all groups (None where a loss does not reach a parameter).

    Per parameter p with task gradient g_t and distillation gradient g_d, m_t = momentum - delta,
    m_d = momentum + delta, m = (m_t + m_d) / 2, wd = weight_decay (exactly the reference's rules):

    * task: d = g_t + wd p; buffer b_t = d on its first step, else b_t = m_t b_t + d if p also has
      g_d this step, m b_t + d if not; p -= lr b_t (no buffer and p -= lr d when m_t == 0).
    * distillation: b_d = g_d on its first step (no weight decay, even for a parameter that gets
      no task gradient), else m_d b_d + g_d if p also has g_t, m b_d + g_d + wd p if not; p -= lr b_d.

    So weight decay is taken once, with the task gradient, and a parameter reached by one loss
    only runs at the mean momentum. With delta 0 and every parameter reached by both losses
    (or weight decay 0) this is plain SGD with momentum on the summed gradient (up to rounding).
    The buffers are the optimiser state ``momentum_buffer`` and ``momentum_kd_buffer`` (the
    reference's names), so ``state_dict()`` checkpoints and resumes them. Unlike the reference,
    several parameter groups are allowed (each with its own lr, momentum, delta, weight decay),
    and ``step_kd`` copies the gradients, so ``zero_grad(set_to_none=False)`` is safe too.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, delta: float = 0.075,
                 weight_decay: float = 0.0):
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"DOT: lr and weight_decay must be non-negative, got {lr}, {weight_decay}")
        if momentum - delta < 0:
            raise ValueError(f"DOT: momentum - delta must be non-negative, got {momentum} - {delta}")
        super().__init__(params, dict(lr=lr, momentum=momentum, delta=delta, weight_decay=weight_decay))
        self._distill_grads = {}

    @torch.no_grad()
    def step_kd(self) -> None:
        """Take the gradients now in ``.grad`` as the distillation-loss gradients of this step."""
        self._distill_grads = {p: p.grad.detach().clone() for group in self.param_groups
                               for p in group["params"] if p.grad is not None}

    @torch.no_grad()
    def step(self, closure=None):
        """Update with the task gradients in ``.grad`` and those kept by :meth:`step_kd`."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            m_task, m_kd = group["momentum"] - group["delta"], group["momentum"] + group["delta"]
            m_mean = (m_kd + m_task) / 2.0
            for p in group["params"]:
                g_task, g_kd, state = p.grad, self._distill_grads.get(p), self.state[p]
                if g_task is not None:
                    d = g_task.add(p, alpha=wd) if wd != 0 else g_task
                    if m_task != 0:
                        buf = state.get("momentum_buffer")
                        if buf is None:
                            buf = state["momentum_buffer"] = d.detach().clone()
                        else:
                            buf.mul_(m_task if g_kd is not None else m_mean).add_(d)
                        d = buf
                    p.add_(d, alpha=-lr)
                if g_kd is not None:
                    buf = state.get("momentum_kd_buffer")
                    if buf is None:
                        buf = state["momentum_kd_buffer"] = g_kd.clone()
                    elif g_task is not None:
                        buf.mul_(m_kd).add_(g_kd)
                    else:
                        buf.mul_(m_mean).add_(g_kd.add(p, alpha=wd) if wd != 0 else g_kd)
                    p.add_(buf, alpha=-lr)
        self._distill_grads = {}
        return loss

    @torch.no_grad()
    def step_with(self, task_grads: Sequence[Optional[Tensor]], distill_grads: Sequence[Optional[Tensor]]):
        """One update from explicit gradient lists (aligned with the parameters of all groups)."""
        params = [p for group in self.param_groups for p in group["params"]]
        if len(task_grads) != len(params) or len(distill_grads) != len(params):
            raise ValueError(f"DOT.step_with: expected {len(params)} gradients per list")
        self._distill_grads = {p: g.detach().clone() for p, g in zip(params, distill_grads) if g is not None}
        for p, g in zip(params, task_grads):
            p.grad = None if g is None else g.detach()
        return self.step()


def dot_trajectory(x, y, feat_t, w_shared, b_shared, w_task, w_kd, lr, momentum, delta, weight_decay, steps):
    """The golden check's driver (``tests/golden/dot.pt``): ``steps`` DOT updates of a tiny model.

    h = tanh(x w_shared^T + b_shared); task loss CE(h w_task^T, y); distillation loss
    MSE(h w_kd^T, feat_t). w_shared, b_shared get both gradients, w_task only the task one, w_kd
    only the distillation one, so every branch of the update runs. Returns (losses [steps, 2] =
    (task, distillation) before each update, parameters after each update, task momentum buffers
    of (w_shared, b_shared, w_task), distillation buffers of (w_shared, b_shared, w_kd)).
    """
    params = [t.detach().clone().requires_grad_(True) for t in (w_shared, b_shared, w_task, w_kd)]
    opt = DistillationOrientedTrainer(params, lr=float(lr), momentum=float(momentum), delta=float(delta),
                                      weight_decay=float(weight_decay))
    losses, trajectory = [], []
    for _ in range(int(steps)):
        h = torch.tanh(x @ params[0].t() + params[1])
        loss_task = F.cross_entropy(h @ params[2].t(), y)
        loss_kd = F.mse_loss(h @ params[3].t(), feat_t)
        opt.zero_grad(set_to_none=True)
        loss_kd.backward(retain_graph=True)
        opt.step_kd()
        opt.zero_grad(set_to_none=True)
        loss_task.backward()
        opt.step()
        losses.append(torch.stack([loss_task.detach(), loss_kd.detach()]))
        trajectory.append([p.detach().clone() for p in params])
    task_bufs = [opt.state[p]["momentum_buffer"] for p in params[:3]]
    kd_bufs = [opt.state[p]["momentum_kd_buffer"] for p in (params[0], params[1], params[3])]
    return torch.stack(losses), trajectory, task_bufs, kd_bufs


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("dot", GoldenEntry(
    "", {k: f"arg:{k}" for k in ("x", "y", "feat_t", "w_shared", "b_shared", "w_task", "w_kd")},
    function="distillers.optim:dot_trajectory",
    hparam_options={k: k for k in ("lr", "momentum", "delta", "weight_decay", "steps")},
    outputs={"1": "params", "2": "momentum_buffer", "3": "momentum_kd_buffer"},
    task="optimizer"))
