"""The one training loop, for teachers and students, on one process or many.

A teacher run is a student run without a teacher and without a distiller. The run is
assembled once (:mod:`engine.assembly`), each step happens in :mod:`engine.step`, and this
module walks the epochs: initialisation stages (AB, FT, FSP) first, then the main stage,
with evaluation, checkpoints, reporting and signals. Where the run is lives in a
:class:`~engine.run_state.RunState`; checkpoints are taken and continued by :mod:`engine.resume`.

Nothing is lost and nothing is trained twice: SIGINT and SIGTERM are deferred to the next safe
point (:mod:`engine.interrupts`): after an optimizer step, or after an epoch's evaluation and
checkpoint. There ``latest.pth`` is written, holding every rank's RNG state, the per-rank
buffers that differ from rank 0's and the epoch's running train metrics, and the run stops.
``--resume`` continues from it bit for bit on CPU, on one process or K (the same K), on every
loader: each sample's augmentation is a function of (seed, epoch, sample).
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Dict, Optional

import torch
from torch import nn
from tqdm import tqdm

from engine.assembly import assemble
from engine.checkpoint import save_atomic
from engine.distributed import DistInfo, all_reduce_sum, barrier, broadcast_buffers, broadcast_result
from engine.interrupts import STOP, RunInterrupted, fault_point
from engine.resume import restore, resume_path, snapshot
from engine.run_folder import RunFolder
from engine.run_state import RunState
from engine.step import Stepper
from engine.reporting import Progress, describe_run, epoch_line


class Trainer:
    """A run (:attr:`run`), where it is (:attr:`state`) and its step (:attr:`stepper`); :meth:`fit` runs it."""

    def __init__(self, args, info: DistInfo, kind: str):
        self.info = info
        self.run = assemble(args, info, kind)
        self.state = RunState(phase="init" if self.run.method is not None and self.run.method.init_stage() else "main")
        self.stepper = Stepper(self.run)
        self.stepper.enter(None)
        self.saved_any = False  # whether this run wrote a checkpoint (else its new folder is removed)
        self.resumed: Optional[dict] = None

    # ------------------------------------------------------------------ stages
    def enter_stage(self, stage=None):
        """Make ``stage`` (an init stage, or None: the main stage) the current one: its taps and its
        optimiser, which is returned. The main stage after an init stage freezes that stage's parts
        (``finish_init_stage``) and builds the main optimiser anew: the one place of that transition."""
        run = self.run
        if stage is not None:
            run.optimizer = run.stage_optimizer(stage)
            self.state.phase = "init"
        else:
            if self.state.phase == "init":
                run.method.finish_init_stage()
                run.optimizer, run.scheduler = run.main_optimizer()
            self.state.phase = "main"
        self.stepper.enter(stage)
        return run.optimizer

    def train_step(self, batch, optimizer, stage=None):
        """One step of the loop on ``batch`` (moved to the run's device). Public: the smoke matrix and the
        cost table run exactly this."""
        where = f"{'init ' if stage else ''}epoch {self.state.epoch}, batch {self.state.step + 1}"
        self.stepper.epoch = self.state.epoch
        return self.stepper.step(batch.to(self.info.device, non_blocking=True), optimizer, stage, where)

    def train_epoch(self, optimizer, stage=None) -> Dict[str, float]:
        """The rest of the current epoch (from ``state.step``), stopping at a safe point on request."""
        run, state = self.run, self.state
        run.model.train()
        if run.method is not None:
            run.method.train()
        # an initialisation epoch gets its own shuffle (negative epoch ids)
        run.train_loader.set_epoch(state.epoch if stage is None else -state.epoch, skip=state.step)
        show = self.info.is_main and sys.stderr.isatty()
        progress = Progress(self.info.is_main and not show, per_epoch=state.step + len(run.train_loader),
                            batch=run.settings.batch_size)
        name = f"init {state.epoch}/{stage.epochs}" if stage else f"epoch {state.epoch}/{run.settings.epochs}"
        per_epoch = state.step + len(run.train_loader)
        bar = tqdm(run.train_loader, desc=name, disable=not show, leave=False, dynamic_ncols=True,
                   initial=state.step, total=per_epoch)
        log_every = run.settings.log_every
        window = [0.0, 0.0]  # seconds waited for data, seconds in all, since the last --log_every point
        started = time.perf_counter()
        for batch in bar:
            arrived = time.perf_counter()
            loss, prediction, terms = self.train_step(batch, optimizer, stage)
            state.step += 1
            now = time.perf_counter()
            # running sums stay on the device: read at log points and at the end of the epoch
            state.totals.add(len(batch), run.task.train_correct(prediction.detach(), batch.labels.to(prediction.device)),
                             loss.detach(), {k: v.detach() for k, v in terms.items()}, now - started, arrived - started)
            window = [window[0] + arrived - started, window[1] + now - started]
            started = now
            step = (abs(state.epoch) - 1) * per_epoch + state.step
            if log_every and step % log_every == 0:  # curves within the epoch
                run.log.scalars("init_step" if stage else "train_step",
                                {"loss": loss.item(), **{k: float(v.detach()) for k, v in terms.items()},
                                 "lr": optimizer.param_groups[0]["lr"],
                                 "data_wait": window[0] / max(window[1], 1e-9)}, step)
                window = [0.0, 0.0]
            if show and (self.stepper.watch.every == 1 or log_every and step % log_every == 0):
                bar.set_postfix(loss=f"{loss.item():.3f}")
            progress.step(name, state.step, loss.detach(), run.log)
            fault_point("init_step" if stage else "train_step", state.epoch, state.step, self.info.rank)
            if STOP.agreed():  # a safe point: the step is complete
                self._stop(f"{'init ' if stage else ''}epoch {state.epoch}, batch {state.step}")
        bar.close()
        self.stepper.check_finite()
        return state.totals.metrics(run.task.train_accuracy)

    def evaluate(self, model: Optional[nn.Module] = None, head: Optional[nn.Module] = None) -> Dict[str, float]:
        run = self.run
        model = model or run.model
        if model is run.model:  # every rank evaluates with rank 0's BatchNorm statistics
            broadcast_buffers(run.model)
        with run.precision.autocast():
            return run.task.evaluate(model, run.test_loader, self.info.device, head)

    # ------------------------------------------------------------- checkpoints
    def save(self, name: str, acc: float) -> str:
        """Write a checkpoint (every rank must call: the per-rank state is gathered)."""
        path = os.path.join(self.run.run_dir, name)
        self.stepper.check_finite()  # a non-finite step never reaches a checkpoint
        state = snapshot(self.run, self.state, acc)
        if self.info.is_main:
            save_atomic(state, path)
        self.saved_any = True
        return path

    def _stop(self, where: str) -> None:
        """Write ``latest.pth`` at this safe point and end the run with a one-line message."""
        path = self.save("latest.pth", self.state.last_acc)
        barrier()  # every rank leaves together, after rank 0 wrote the file
        raise RunInterrupted(f"stopped by {STOP.signal} at {where}: state saved to {path}; "
                             "continue with --resume", STOP.signal)

    def resume(self, path: str) -> None:
        """Continue from checkpoint ``path`` (:func:`engine.resume.restore`): its position and parts."""
        self.state, self.resumed = restore(self.run, path, lambda: self.enter_stage(None))

    # -------------------------------------------------------------------- run
    def fit(self) -> Dict[str, float]:
        """Run (or continue) the run in its locked folder; see the module docstring for interrupts."""
        run = self.run
        folder = RunFolder(run.run_dir, log=run.log) if self.info.is_main else None
        broadcast_result(folder.acquire if folder else None)  # every rank fails if the folder is taken
        try:
            fault_point("start", rank=self.info.rank)
            if run.settings.overwrite and folder is not None:
                folder.start_over()
            path = resume_path(run.settings.resume, run.run_dir, run.log)
            if path:
                self.resume(path)
                if self.state.phase == "main" and self.state.epoch > run.settings.epochs:
                    return self._finished()
                run.log(f"resumed from {path}: {self.state.phase} epoch {self.state.epoch}"
                        + (f", batch {self.state.step}" if self.state.step else ", from its start"))
            describe_run(run, self.state, fresh=self.resumed is None, evaluate=self.evaluate)
            if STOP.agreed():  # asked to stop before the first step: nothing to save
                raise RunInterrupted(f"stopped by {STOP.signal} before the first step; nothing was trained",
                                     STOP.signal)
            if self.state.phase == "init":
                self._run_init_stage()
            return self._run_main()
        except KeyboardInterrupt:  # a second Ctrl-C: out at once, the last checkpoint stays valid
            run.log("\ninterrupted immediately: nothing was written; the last checkpoint on disk is intact")
            raise
        finally:
            run.log.close()
            self.stepper.close()
            if folder is not None:
                folder.release(keep=self.saved_any)

    def _finished(self) -> Dict[str, float]:
        run, key = self.run, self.run.task.score_key
        run.log(f"the run in {run.run_dir} is finished ({run.settings.epochs} epochs): final test {key} "
                f"{self.state.last_acc:.2f} (best {self.state.best_acc:.2f}); nothing to do (raise --epochs to "
                "train longer)")
        return {key: self.state.last_acc, f"best_{key}": self.state.best_acc}

    def _run_init_stage(self) -> None:
        run, state = self.run, self.state
        stage = run.method.init_stage()
        optimizer = self.enter_stage(stage)
        if self.resumed is not None and self.resumed.get("phase") == "init":
            optimizer.load_state_dict(self.resumed["optimizer"])
        run.log(f"initialisation stage of {run.settings.method_name}: {stage.epochs} epochs at lr "
                f"{optimizer.param_groups[0]['lr']}{' (student backbone trained too)' if stage.trains_student else ''}")
        state.epoch = state.init_done + 1
        while state.init_done < stage.epochs:
            metrics = self.train_epoch(optimizer, stage)
            state.init_done += 1
            run.log(f"init epoch {state.init_done}/{stage.epochs}: loss {metrics['loss']:.4f}")
            run.log.scalars("init", metrics, state.init_done)
            state.start_epoch(state.init_done + 1)
            self.save("latest.pth", float("nan"))
            if STOP.agreed():
                self._stop(f"the end of init epoch {state.init_done}")
        self.enter_stage(None)
        state.epoch = 1

    def _run_main(self) -> Dict[str, float]:
        run, state, key = self.run, self.state, self.run.task.score_key
        acc = {key: state.last_acc}
        while state.epoch <= run.settings.epochs:
            lr = run.optimizer.param_groups[0]["lr"]
            resumed_at_end = state.step == len(run.train_loader) and state.step > 0
            metrics = self.train_epoch(run.optimizer)
            # From here to the checkpoint the epoch ends as one unit: a signal waits for it.
            with warnings.catch_warnings():
                if resumed_at_end:  # no step in this process yet; torch would warn about the order
                    warnings.simplefilter("ignore", UserWarning)
                run.scheduler.step()
            metrics["lr"] = lr
            if run.store is not None:
                metrics.update(self._store_metrics())
                if metrics["teacher_store_corrupt"]:
                    run.log(f"teacher store: {int(metrics['teacher_store_corrupt'])} corrupt entries recomputed")
            run.log.scalars("train", metrics, state.epoch)
            evaluated = state.epoch % run.settings.eval_freq == 0 or state.epoch == run.settings.epochs
            if evaluated:
                fault_point("eval", state.epoch, rank=self.info.rank)
                acc = self.evaluate(head=run.method.inference_head() if run.method is not None else None)
                state.last_acc, state.last_top5 = acc[key], acc.get("top5", float("nan"))
                run.log.scalars("test", acc, state.epoch)
                run.log(epoch_line(run, state, lr, metrics, acc))
                if run.ema is not None:  # the weights' moving average, scored beside them (engine/ema.py)
                    run.ema.report(self.evaluate, run.method.inference_head() if run.method is not None else None,
                                   key, run.log, state.epoch, run.task.describe)
            improved = evaluated and acc[key] > state.best_acc
            if improved:
                state.best_acc = acc[key]
            state.start_epoch(state.epoch + 1)
            if improved:
                self.save("best.pth", acc[key])
            self.save("latest.pth", acc[key])
            fault_point("epoch_end", state.epoch - 1, rank=self.info.rank)
            if STOP.agreed() and state.epoch <= run.settings.epochs:
                self._stop(f"the end of epoch {state.epoch - 1}")
        run.log(f"final test {key} {acc[key]:.2f} (best {state.best_acc:.2f}), checkpoints in {run.run_dir}")
        self._report_skipped_images()
        return {**acc, f"best_{key}": state.best_acc}

    def _store_metrics(self) -> Dict[str, float]:
        """The epoch's teacher-store hit rate over every rank, and the store's size on disk."""
        store = self.run.store
        counts = all_reduce_sum(torch.tensor([store.hits, store.lookups, store.corrupt_recomputed],
                                             dtype=torch.float64))
        store.reset_counters()  # after the counts are read: it zeroes them
        return {"teacher_store_hits": counts[0].item() / max(counts[1].item(), 1.0),
                "teacher_store_gb": store.size_on_disk() / 1e9, "teacher_store_corrupt": counts[2].item()}

    def _report_skipped_images(self) -> None:
        """--skip_bad_images: say at the end how many unreadable files were replaced (this process's)."""
        run = self.run
        skipped = sorted({*getattr(run.train_set, "bad_images", ()), *getattr(run.test_set, "bad_images", ())})
        if skipped:
            run.log(f"skipped {len(skipped)} unreadable image file(s) (--skip_bad_images): "
                    f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")
