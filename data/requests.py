"""The data side of the data requests (:mod:`core.requests`): one server per kind, one wrapper.

A :class:`RequestServer` turns one request into per-sample fields (``index``, ``contrast_idx``,
a further view under ``views``, or a plugin's own field under ``extras``). :class:`Served`
wraps a training set and yields each sample as a dict of named fields, which
:func:`data.loaders.collate` turns into a :class:`core.batch.Batch`. Loaders that do not read
items through the dataset (the device loader, DALI) call the servers whose fields come from
the sample index alone (``from_index``); a request that needs the image (an extra view) is
served by the DataLoader path only, and the other loaders refuse it by name.

Each sample's augmentation on the DataLoader path is drawn from generators seeded by (seed,
epoch, sample index), so it is the same with any number of worker processes, in any order,
and after a resume in the middle of an epoch. All three generators a transform may draw from
are seeded (torch's, which torchvision uses, and Python's ``random`` and NumPy's, which timm's
RandAugment, random erasing and crop use) and restored afterwards.

A plugin adds a kind in its own file::

    @dataclass(frozen=True)
    class Jitter(DataRequest):
        sigma: float

    @register_request_server(Jitter)
    class JitterServer(RequestServer):
        def fields(self, index, image=None):
            return {"extras": {"jitter": ...}}
"""
from __future__ import annotations

import contextlib
import copy
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from core.registry import Registry
from core.requests import ContrastSampling, DataRequest, ExtraView, SampleIndex
from data.registry import DataError
from data.view_keys import view_key
from data.wrappers import Wrapper

#: request class name -> its server class.
SERVERS = Registry("data request")


def register_request_server(request_type: Type[DataRequest]):
    """Class decorator: ``cls`` serves requests of ``request_type`` (a :class:`DataRequest` subclass)."""
    if not (isinstance(request_type, type) and issubclass(request_type, DataRequest)):
        raise TypeError(f"register_request_server expects a DataRequest subclass, got {request_type!r}")

    def decorator(cls):
        cls.request_type = request_type
        return SERVERS.register(request_type.__name__)(cls)

    return decorator


class RequestServer:
    """Serves one request: ``fields(index, image)`` -> the sample's named fields.

    ``from_index``: the fields need only the sample index (served by every loader); otherwise
    the server needs the dataset's item and only the DataLoader path serves it.
    """

    from_index = True
    request_type: Type[DataRequest] = DataRequest

    def __init__(self, request: DataRequest, dataset: Dataset, seed: int):
        self.request, self.dataset, self.seed = request, dataset, int(seed)

    def fields(self, index: int, image=None) -> Dict[str, Any]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """A new epoch's draws (servers that draw per epoch keep the epoch in shared memory)."""


def servers_for(requests: Sequence[DataRequest], dataset: Dataset, seed: int) -> List[RequestServer]:
    """One server per request; an unknown kind is an error naming the registered ones."""
    out = []
    for request in requests:
        name = type(request).__name__
        if name not in SERVERS:
            raise DataError(f"no data server for the request {request} (a plugin defines one with "
                            f"data.register_request_server({name})); known kinds: {', '.join(SERVERS.names())}")
        out.append(SERVERS.get(name)(request, dataset, seed))
    return out


@register_request_server(SampleIndex)
class SampleIndexServer(RequestServer):
    def fields(self, index: int, image=None) -> Dict[str, Any]:
        return {"index": int(index)}


@register_request_server(ContrastSampling)
class ContrastServer(RequestServer):
    """A positive and ``k`` negatives per sample (models-and-data.md §3.2), without a per-class
    index table: one label sort and class offsets (O(n) memory) let a uniform draw over the
    n - n_c other-class positions skip the class's own block. ``percent`` < 1 keeps a fixed
    random share (rounded up) of every class as the negative pool. Each draw comes from a
    generator seeded by (seed, epoch, index): the same in any worker, order or loader."""

    def __init__(self, request: ContrastSampling, dataset: Dataset, seed: int, percent: float = 1.0):
        super().__init__(request, dataset, seed)
        if not 0.0 < percent <= 1.0:
            raise ValueError(f"percent must be in (0, 1], got {percent}")
        labels = np.asarray(dataset.targets, dtype=np.int64)
        if len(np.unique(labels)) < 2:
            raise DataError("contrast sampling needs at least two classes to draw negatives from")
        self.negatives, self.positive = int(request.negatives), request.positive
        self._labels = labels
        counts = np.bincount(labels)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        perm = np.random.default_rng(self.seed).permutation(len(labels))  # by class, shuffled inside
        self._order = perm[np.argsort(labels[perm], kind="stable")]
        keep = np.ceil(percent * counts).astype(np.int64)
        rank = np.arange(len(labels)) - self._starts[labels[self._order]]
        self._pool = self._order[rank < keep[labels[self._order]]]
        self._pool_starts = np.concatenate([[0], np.cumsum(keep)])
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()  # persistent workers see it

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def fields(self, index: int, image=None) -> Dict[str, Any]:
        return {"index": int(index), "contrast_idx": self.contrast_indices(index)}

    def contrast_indices(self, idx: int) -> torch.Tensor:
        """Sample ``idx``'s positive and negatives this epoch, a LongTensor [k + 1]."""
        idx = int(idx)
        c = self._labels[idx]
        rng = np.random.default_rng([self.seed, int(self._epoch), idx])
        if self.positive == "exact":
            pos = idx
        else:
            pos = self._order[self._starts[c] + rng.integers(self._starts[c + 1] - self._starts[c])]
        lo, hi = self._pool_starts[c], self._pool_starts[c + 1]
        m = len(self._pool) - (hi - lo)
        draws = rng.choice(m, self.negatives, replace=False) if self.negatives <= m \
            else rng.integers(0, m, self.negatives)
        draws = draws + (draws >= lo) * (hi - lo)  # skip the own class's block
        return torch.from_numpy(np.concatenate([[pos], self._pool[draws]])).long()


def _insert_before_tensor(transform: T.Compose, augment) -> T.Compose:
    """``transform`` with ``augment`` inserted before its tensor conversion (after crop and flip)."""
    steps = list(transform.transforms)
    at = next((i for i, step in enumerate(steps) if isinstance(step, (T.ToTensor, T.ConvertImageDtype))), None)
    if at is None:
        raise DataError(f"cannot add an augmentation to a pipeline without ToTensor/ConvertImageDtype: {transform}")
    return T.Compose(steps[:at] + [augment] + steps[at:])


@contextlib.contextmanager
def draws_from(key: int):
    """Seed torch's, Python's and NumPy's global generators with ``key`` for one sample's draws,
    and give the caller its own streams back afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(key)
        random.seed(key)
        np.random.seed(key % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@register_request_server(ExtraView)
class ExtraViewServer(RequestServer):
    """A further view of the sample: a copy of the dataset whose transform adds ``augment``,
    drawn from its own stream (independent of the first view's draws)."""

    from_index = False

    def __init__(self, request: ExtraView, dataset: Dataset, seed: int):
        super().__init__(request, dataset, seed)
        if not isinstance(getattr(dataset, "transform", None), T.Compose):
            raise DataError(f"a second augmented view needs a dataset with a torchvision Compose 'transform'; "
                            f"{type(dataset).__name__} has none")
        self.view = copy.copy(dataset)
        if request.augment is not None:
            self.view.transform = _insert_before_tensor(dataset.transform, request.augment)
        self.stream = int.from_bytes(request.name.encode()[:7].ljust(7, b"\0"), "little")

    def fields(self, index: int, image=None, key: Optional[int] = None) -> Dict[str, Any]:
        if key is None:
            return {"views": {self.request.name: self.view[index][0]}}
        with draws_from((key ^ self.stream) & 0x7FFF_FFFF_FFFF_FFFF):
            return {"views": {self.request.name: self.view[index][0]}}


class Served(Wrapper):
    """A training set whose items are dicts of named fields: ``images``, ``labels`` and what the
    servers add. Augmentations are drawn from (seed, epoch, index) (module docstring)."""

    def __init__(self, dataset: Dataset, servers: Sequence[RequestServer] = (), seed: int = 0):
        super().__init__(dataset)
        self.servers, self.seed = list(servers), int(seed)
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)
        for server in self.servers:
            server.set_epoch(epoch)
        super().set_epoch(epoch)

    def sample_key(self, index: int) -> int:
        """The 63-bit seed of sample ``index``'s draws this epoch (data.device_loader.view_key)."""
        return int(view_key(self.seed, int(self._epoch), [int(index)])[0]) & 0x7FFF_FFFF_FFFF_FFFF

    def __getitem__(self, index: int) -> Dict[str, Any]:
        key = self.sample_key(index)
        with draws_from(key):  # the caller's streams are left as they were
            image, label = self.dataset[index]
            item: Dict[str, Any] = {"images": image, "labels": label}
            for server in self.servers:
                more = server.fields(index, image, key) if isinstance(server, ExtraViewServer) \
                    else server.fields(index, image)
                _merge(item, more)
        return item


def _merge(item: Dict[str, Any], more: Dict[str, Any]) -> None:
    for name, value in more.items():
        if isinstance(value, dict):
            item.setdefault(name, {}).update(value)
        else:
            item[name] = value


def index_servers(servers: Sequence[RequestServer], loader: str) -> List[RequestServer]:
    """The servers a loader that reads no dataset items can use (all of them, or an error naming the
    request it cannot serve)."""
    needs_items = [s.request for s in servers if not s.from_index]
    if needs_items:
        raise DataError(f"{loader} serves fields computed from the sample index only; {needs_items[0]} needs the "
                        f"image itself: use --loader dataloader (the default picks it) for this method")
    return list(servers)


def host_fields(servers: Sequence[RequestServer], indices: Sequence[int]) -> Dict[str, Any]:
    """The index-only servers' fields of ``indices``, batched on the host: ``index``,
    ``contrast_idx``, ``extras``."""
    items = [{} for _ in indices]
    for item, i in zip(items, indices):
        for server in servers:
            _merge(item, server.fields(int(i)))
    return _stack(items) if items else {}


def _stack(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    from torch.utils.data import default_collate
    return default_collate(items)


def served_dataset(dataset, requests: Sequence[DataRequest], seed: int) -> Served:
    """``dataset`` serving ``requests`` (the DataLoader path's training set)."""
    return Served(dataset, servers_for(requests, dataset, seed), seed)


def unwrap(dataset) -> Tuple[Any, List[RequestServer]]:
    """(the dataset under a :class:`Served`, its servers); a plain set gives (it, [])."""
    if isinstance(dataset, Served):
        return dataset.dataset, dataset.servers
    return dataset, []
