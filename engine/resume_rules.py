"""Which flags a resumed run may change: none that change what it computes.

A resumed run keeps the values it started with; a changed learning rate, schedule, method
option, seed or batch is refused with the recorded and the new value. Flags that do not change
what is computed may change freely, and a few that change it in ways a user may mean
(``--epochs``, moved data or teacher paths) are applied with a warning.
"""
from __future__ import annotations

from typing import Any, Dict

#: Flags that may change when a run is resumed because they do not change what it computes.
RESUME_FREE = frozenset({
    "resume", "overwrite", "config", "plugins", "no_tensorboard", "save_root", "save_dir", "gpu_id", "device",
    "dist_url", "rank", "dist_backend", "multiprocessing_distributed", "nprocs", "world_size", "evaluate",
    "path_s", "skip_bad_images", "trial", "log_every", "teacher_tolerance", "no_teacher_check", "given",
})
#: Flags that may change with a warning: they alter the run, but a user may mean it.
RESUME_WARN = {
    "epochs": "the run's length changes (the lr schedule does not)",
    "eval_freq": "evaluations (and so best.pth) follow the new frequency",
    "num_workers": "the loader's worker streams change, so augmentations are no longer those of the first run",
    "path_t": "the teacher is read from the new path (its weights must be the run's teacher's: checked)",
    "data_root": "the data are read from the new folder; they must be the same data",
    "teacher_store": "the teacher's outputs are read from another store (equal within float tolerance)",
    "no_teacher_store": "the teacher's outputs are computed or read from the store (equal within float tolerance)",
    "channels_last": "the step's numerics may differ in the last bits",
    "compile": "the step's numerics may differ in the last bits",
}


def resume_conflicts(recorded: Dict[str, Any], current: Dict[str, Any]):
    """(errors, warnings) for flags whose value differs from the run's recorded config."""
    def comparable(key, values):
        value = values.get(key)
        if key == "data_opts" and isinstance(value, dict):  # skipping bad images may be switched on later
            value = {k: v for k, v in value.items() if k != "skip_bad_images"}
        return value

    errors, warnings = [], []
    method_keys = {k for k in set(recorded) | set(current) if k.startswith("method__")}  # set only when given
    for key in sorted((set(recorded) & set(current)) | method_keys):
        old, new = comparable(key, recorded), comparable(key, current)
        if key in RESUME_FREE or old == new:
            continue
        flag = "--" + key.replace("method__", "")
        said = lambda v: "its default" if v is None else repr(v)  # noqa: E731
        text = f"{flag} is {said(new)} here, the run was started with {said(old)}"
        if key == "loader" and new == "auto":  # a run from before the device loader became the default
            text += f" (auto is the default now: pass --loader {old} to continue it)"
        if key in RESUME_WARN:
            warnings.append(f"{text}: {RESUME_WARN[key]}")
        else:
            errors.append(text)
    return errors, warnings
