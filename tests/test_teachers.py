"""Teachers you can trust (issue 23): cards, the zoo, verified downloads, the pre-flight check.

Downloads go to a real ``http.server`` in a thread (with Range support and a switch that cuts
the connection after N bytes); the pre-flight check evaluates a real small model on real
tensors through the classification task's own evaluation.
"""
import hashlib
import io
import json
import os
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from data.loaders import collate
from engine import checkpoint as ckpt
from engine.tasks import TASKS
from engine.teacher_store import teacher_fingerprint
from engine.teachers import card as cards
from engine.teachers import local, preflight as pf, zoo
from engine.teachers.archive import ArchiveError, extract_member
from engine.teachers.download import DownloadError, HashBook, fetch, name_hash_prefix
from models import create_model


# ---------------------------------------------------------------- a real HTTP server
class Server:
    """Serves ``files`` (url path -> bytes) with Range support. ``cuts[path]`` lists, per request,
    after how many body bytes to drop the connection; ``ignore_range`` answers 200 to a Range."""

    def __init__(self):
        self.files, self.cuts, self.requests, self.ignore_range = {}, {}, [], False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests.append((self.path, self.headers.get("Range")))
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                ranged = self.headers.get("Range")
                if ranged and not outer.ignore_range:
                    start = int(ranged.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cuts = outer.cuts.get(self.path) or []
                cut = cuts.pop(0) if cuts else None
                payload = body[start:] if cut is None else body[start:start + cut]
                self.wfile.write(payload)
                self.wfile.flush()
                if cut is not None:  # drop the connection mid-body
                    self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def closed_port_url(path="/teacher.pth") -> str:
    """A URL on a port nobody listens on: the offline case, without leaving the machine."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}{path}"


def checkpoint_bytes(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict()}, buffer)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def payload():
    return checkpoint_bytes(create_model("resnet8", num_classes=10, family="cifar"))


# ---------------------------------------------------------------- download
def test_download_with_progress_and_verified_hash(server, payload, tmp_path, capsys):
    server.files["/t.pth"] = payload
    dest = str(tmp_path / "t.pth")
    fetch(server.url("/t.pth"), dest, sha256=sha(payload))
    assert open(dest, "rb").read() == payload
    err = capsys.readouterr().err
    assert "t.pth" in err and "100%" in err  # tqdm's bar on stderr
    assert not os.path.exists(dest + ".part")
    fetch(server.url("/t.pth"), dest, sha256=sha(payload))  # cached: verified, not downloaded again
    assert len(server.requests) == 1


def test_corrupted_download_is_refused_and_moved_aside(server, payload, tmp_path):
    bad = bytearray(payload)
    bad[len(bad) // 2] ^= 0xFF
    server.files["/t.pth"] = bytes(bad)
    dest = str(tmp_path / "t.pth")
    with pytest.raises(DownloadError) as err:
        fetch(server.url("/t.pth"), dest, sha256=sha(payload), progress=False)
    text = str(err.value)
    assert "\n" not in text and sha(payload) in text and sha(bytes(bad)) in text
    assert not os.path.exists(dest) and open(dest + ".rejected", "rb").read() == bytes(bad)


def test_first_download_records_the_hash_and_later_uses_check_it(server, payload, tmp_path):
    server.files["/t.pth"] = payload
    book = HashBook(str(tmp_path / "hashes.json"))
    dest = str(tmp_path / "t.pth")
    fetch(server.url("/t.pth"), dest, book=book, progress=False)
    assert book.get(server.url("/t.pth")) == sha(payload)
    with open(dest, "r+b") as fh:  # the cached file changes on disk
        fh.seek(100)
        fh.write(b"\x00" * 8)
    with pytest.raises(DownloadError, match="cached copy .* refused, moved to"):
        fetch(server.url("/t.pth"), dest, book=book, progress=False)
    assert os.path.exists(dest + ".rejected") and not os.path.exists(dest)
    fetch(server.url("/t.pth"), dest, book=book, progress=False)  # downloaded afresh, matches the record
    assert open(dest, "rb").read() == payload


def test_hash_prefix_in_the_file_name_is_checked(server, payload, tmp_path):
    good, wrong = f"/m-{sha(payload)[:8]}.pth", "/m-0badbeef.pth"
    assert name_hash_prefix("https://download.pytorch.org/models/resnet18-f37072fd.pth") == "f37072fd"
    server.files[good] = server.files[wrong] = payload
    fetch(server.url(good), str(tmp_path / "good.pth"), progress=False)
    with pytest.raises(DownloadError, match="0badbeef"):
        fetch(server.url(wrong), str(tmp_path / "wrong.pth"), progress=False)
    assert os.path.exists(tmp_path / "wrong.pth.rejected")


def test_interrupted_download_resumes_with_a_range_request(server, payload, tmp_path):
    server.files["/t.pth"] = payload
    server.cuts["/t.pth"] = [5000]
    dest = str(tmp_path / "t.pth")
    with pytest.raises(DownloadError) as err:
        fetch(server.url("/t.pth"), dest, sha256=sha(payload), progress=False, retries=0)
    assert "\n" not in str(err.value) and "run again to resume" in str(err.value)
    assert os.path.getsize(dest + ".part") == 5000
    fetch(server.url("/t.pth"), dest, sha256=sha(payload), progress=False)
    assert server.requests == [("/t.pth", None), ("/t.pth", "bytes=5000-")]
    assert open(dest, "rb").read() == payload


def test_cuts_are_resumed_within_one_call(server, payload, tmp_path):
    server.files["/t.pth"] = payload
    server.cuts["/t.pth"] = [3000, 4000]
    dest = str(tmp_path / "t.pth")
    fetch(server.url("/t.pth"), dest, sha256=sha(payload), progress=False, retries=2)
    assert [r for _, r in server.requests] == [None, "bytes=3000-", "bytes=7000-"]
    assert open(dest, "rb").read() == payload


def test_a_server_that_ignores_range_restarts_the_file(server, payload, tmp_path):
    server.files["/t.pth"] = payload
    server.cuts["/t.pth"] = [3000]
    server.ignore_range = True
    dest = str(tmp_path / "t.pth")
    fetch(server.url("/t.pth"), dest, sha256=sha(payload), progress=False, retries=1)
    assert open(dest, "rb").read() == payload  # the 200 body replaced the part, not appended to it


def test_offline_is_one_line_naming_url_and_where_to_put_the_file(tmp_path):
    url, dest = closed_port_url(), str(tmp_path / "t.pth")
    with pytest.raises(DownloadError) as err:
        fetch(url, dest, sha256="ab" * 32, progress=False)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"cannot download {url}: ")
    assert text.endswith(f"put the file at {dest} by hand (sha256 {'ab' * 32})")


def test_http_error_is_one_line(server, tmp_path):
    with pytest.raises(DownloadError, match=r"^cannot download .*/missing.pth: HTTP 404 .*by hand"):
        fetch(server.url("/missing.pth"), str(tmp_path / "m.pth"), progress=False)


# ---------------------------------------------------------------- cards
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


def own_card(model, **over):
    values = dict(arch="resnet8", model_options={}, dataset="synthetic", num_classes=10, mean=(0.52, 0.50, 0.52),
                  std=(0.25, 0.25, 0.24), input_size=32, crop=32, top1=61.5, top5=97.25,
                  recipe=cards.recipe_from_config({"epochs": 4, "learning_rate": 0.05, "lr_decay_epochs": [2, 3],
                                                   "batch_size": 64, "data_opts": {"train_size": 256}, "x": 1}),
                  world_size=2, batch_per_process=32, seed=3, code_version="0.1.0+test")
    values.update(over)
    return cards.make_card(model, **values)


def test_card_round_trips_through_a_weights_only_checkpoint_and_json(tmp_path):
    model = create_model("resnet8", num_classes=10, family="cifar")
    card = own_card(model)
    assert card["global_batch"] == 64 and card["mean"] == [0.52, 0.50, 0.52] and "x" not in card["recipe"]
    assert card["weights_sha256"] == teacher_fingerprint(model) == cards.weights_sha256(model.state_dict())
    path = str(tmp_path / "best.pth")
    ckpt.save_atomic({"format": ckpt.FORMAT, "model": model.state_dict(), "card": card}, path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["card"] == card
    assert cards.card_of(state, path) == card
    cards.write_card_json(card, str(tmp_path / "card.json"))
    assert json.load(open(tmp_path / "card.json")) == card


def test_weights_hash_ignores_a_dataparallel_prefix_and_sees_one_changed_value():
    model = create_model("resnet8", num_classes=10, family="cifar")
    state = model.state_dict()
    prefixed = {f"module.{k}": v for k, v in state.items()}
    assert cards.weights_sha256(prefixed) == cards.weights_sha256(state)
    changed = {k: v.clone() for k, v in state.items()}
    changed["fc.bias"][0] += 1e-6
    assert cards.weights_sha256(changed) != cards.weights_sha256(state)


def test_a_card_value_json_cannot_carry_is_refused_by_field():
    model = nn.Linear(2, 2)
    with pytest.raises(cards.CardError, match=r"card field card.recipe.optimizer: .*not a plain value"):
        own_card(model, recipe={"optimizer": object()})
    with pytest.raises(cards.CardError, match="mean: expected 3"):
        own_card(model, mean=(0.5, 0.5))


def test_a_foreign_checkpoint_gets_its_card_from_the_zoo_entry_or_the_flags(tmp_path):
    model = create_model("resnet56", num_classes=100, family="cifar")
    repdistiller = {"model": model.state_dict(), "epoch": 240, "accuracy": torch.tensor(72.1)}
    entry = zoo.lookup("resnet56@cifar100", cache=str(tmp_path)).entry
    card = cards.card_of(repdistiller, "ckpt_epoch_240.pth", zoo_entry=entry)
    assert card["top1"] == 72.34 and card["arch"] == "resnet56" and card["mean"] == list(CIFAR100_MEAN)
    assert card["source"]["kind"] == "zoo" and card["source"]["member"].endswith("resnet56_vanilla/ckpt_epoch_240.pth")
    assert card["weights_sha256"] == teacher_fingerprint(model) and card["assumed"] == []
    from_flags = cards.card_of(repdistiller, "x.pth", flags={"arch": "resnet56", "dataset": "cifar100"})
    assert from_flags["top1"] == pytest.approx(72.1) and from_flags["mean"] == list(CIFAR100_MEAN)
    assert set(from_flags["assumed"]) >= {"mean", "std", "top1"} and from_flags["source"]["kind"] == "flags"
    with pytest.raises(cards.CardError) as err:
        cards.card_of(repdistiller, "x.pth")
    assert "\n" not in str(err.value) and "NAME@DATASET" in str(err.value)


def test_a_distillers_checkpoint_without_a_card_gets_one_from_its_fields():
    model = create_model("resnet8", num_classes=10, family="cifar")
    state = {"format": ckpt.FORMAT, "arch": "resnet8", "num_classes": 10, "dataset": "synthetic",
             "model": model.state_dict(), "world_size": 2, "acc": 55.0, "code_version": "0.1.0",
             "config": {"batch_size": 64, "seed": 1, "epochs": 3, "learning_rate": 0.05}}
    card = cards.card_of(state, "latest.pth")
    assert (card["batch_per_process"], card["global_batch"], card["world_size"]) == (32, 64, 2)
    assert card["top1"] == 55.0 and card["recipe"] == {"batch_size": 64, "epochs": 3, "learning_rate": 0.05}
    assert card["mean"] == [0.52, 0.50, 0.52] and "mean" in card["assumed"]


def test_card_cli_prints_and_writes_json(tmp_path, capsys):
    model = create_model("resnet8", num_classes=10, family="cifar")
    path = str(tmp_path / "best.pth")
    ckpt.save_atomic({"format": ckpt.FORMAT, "model": model.state_dict(), "card": own_card(model)}, path)
    assert cards.main([path, "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "weights_sha256" in out and teacher_fingerprint(model) in out
    assert json.load(open(tmp_path / "c.json"))["top1"] == 61.5
    assert cards.main([str(tmp_path / "missing.pth")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    state = ckpt.load(path)
    state["model"]["fc.bias"][0] += 1.0  # weights changed after the card was written
    ckpt.save_atomic(state, path)
    assert cards.main([path]) == 1
    assert "changed after the card was written" in capsys.readouterr().err


# ---------------------------------------------------------------- the zoo
def results_md_teacher_row():
    """{arch: top-1} from the Teacher rows of ../shared/reference/results.md §1.1 and §2."""
    from tests.conftest import SHARED

    path = SHARED / "reference" / "results.md"
    if not path.exists():
        pytest.skip(f"{path} is not here")
    headers = {"wrn-40-2": "wrn_40_2", "resnet56": "resnet56", "resnet110": "resnet110", "resnet32x4": "resnet32x4",
               "vgg13": "vgg13", "ResNet50": "ResNet50"}
    found, columns = {}, None
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "method":
            columns = [c.split("→")[0] for c in cells[1:]]
        elif cells and cells[0] == "Teacher" and columns and len(cells) == len(columns) + 1:
            for column, value in zip(columns, cells[1:]):
                if column in headers:
                    found[headers[column]] = float(value)
            columns = None
    return found


MDISTILLER_RELEASE = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"


def test_manifest_holds_the_six_cifar_teachers_at_their_published_accuracy(tmp_path):
    published = results_md_teacher_row()
    assert set(published) == {"resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "ResNet50"}
    for arch, top1 in published.items():
        teacher = zoo.lookup(f"{arch}@cifar100", cache=str(tmp_path))
        assert teacher.entry["top1"] == top1 and teacher.entry["arch"] == arch
        assert teacher.url == MDISTILLER_RELEASE
        assert teacher.member == f"cifar_teachers/{arch}_vanilla/ckpt_epoch_240.pth"
        assert ckpt.arch_from_path(teacher.path) == arch  # the cache keeps RepDistiller's folder convention
        create_model(arch, num_classes=100, family="cifar")  # a name of this project's CIFAR zoo
    import data
    meta = data.dataset_info("cifar100")
    assert teacher.entry["mean"] == list(meta["mean"]) and teacher.entry["std"] == list(meta["std"])


def test_manifest_imagenet_teachers_are_torchvisions_published_weights(tmp_path):
    from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights

    import data
    for name, weights in (("ResNet18", ResNet18_Weights.IMAGENET1K_V1), ("ResNet34", ResNet34_Weights.IMAGENET1K_V1),
                          ("ResNet50", ResNet50_Weights.IMAGENET1K_V1)):
        teacher = zoo.lookup(f"{name}@imagenet", cache=str(tmp_path))
        assert teacher.url == weights.url and name_hash_prefix(teacher.url)
        assert teacher.entry["top1"] == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
        assert teacher.entry["top5"] == weights.meta["_metrics"]["ImageNet-1K"]["acc@5"]
        transform = weights.transforms()
        assert teacher.entry["mean"] == list(transform.mean) == list(data.dataset_info("imagenet")["mean"])
        assert teacher.entry["std"] == list(transform.std) and teacher.entry["crop"] == transform.crop_size[0]
        assert teacher.path == os.path.join(str(tmp_path), "imagenet", os.path.basename(weights.url))


@pytest.mark.parametrize("text, pattern", [
    ("resnet32x5@cifar100", r"^Unknown cifar100 teacher 'resnet32x5'\. Did you mean 'resnet32x4'\? Known cifar100 "
                            r"teachers: ResNet50, resnet110, resnet32x4, resnet56, vgg13, wrn_40_2"),
    ("resnet32x4@cifar10", r"^Unknown zoo dataset 'cifar10'\. Did you mean 'cifar100'\? Known zoo datasets: "
                           r"cifar100, imagenet, tiny_imagenet"),
    ("resnet32x4", r"is not a zoo name: expected NAME@DATASET"),
    ("ResNet18@tiny_imagenet", r"^ResNet18@tiny_imagenet has no public file: .*ti_res18.*register it"),
])
def test_zoo_name_errors_are_one_line_with_the_known_names(text, pattern, tmp_path):
    with pytest.raises(zoo.ZooError, match=pattern) as err:
        zoo.lookup(text, cache=str(tmp_path))
    assert "\n" not in str(err.value)


def test_an_existing_file_is_never_taken_for_a_zoo_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert zoo.is_zoo_name("resnet32x4@cifar100")
    (tmp_path / "resnet32x4@cifar100").write_bytes(b"x")
    assert not zoo.is_zoo_name("resnet32x4@cifar100")
    assert not zoo.is_zoo_name("save/teachers/best.pth")


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILLERS_TEACHERS", str(tmp_path / "t"))
    assert zoo.cache_dir() == str(tmp_path / "t")
    monkeypatch.delenv("DISTILLERS_TEACHERS")
    assert zoo.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "distillers", "teachers")


def release_tar(members: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_extract_member_reads_one_named_regular_file(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(release_tar({"cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth": b"abc"}))
    out = extract_member(str(archive), "cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth", str(tmp_path / "x.pth"))
    assert open(out, "rb").read() == b"abc"
    with pytest.raises(ArchiveError, match="Did you mean 'cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth'"):
        extract_member(str(archive), "cifar_teachers/resnet8_vanila/ckpt_epoch_240.pth", str(tmp_path / "y.pth"))
    (tmp_path / "broken.tar").write_bytes(b"not a tar")
    with pytest.raises(ArchiveError, match="cannot read tar archive"):
        extract_member(str(tmp_path / "broken.tar"), "a", str(tmp_path / "z.pth"))


def test_manifest(tmp_path, url_of_tar, url_of_file, tar_sha=None):
    """A manifest of the real format pointing at the test server."""
    values = {
        "format": zoo.FORMAT,
        "datasets": {"cifar100": {"dataset": "cifar100", "num_classes": 100, "mean": list(CIFAR100_MEAN),
                                  "std": list(CIFAR100_STD), "input_size": 32, "crop": 32}},
        "archives": {"rel": {"url": url_of_tar, "sha256": tar_sha, "file": "teachers.tar"}},
        "teachers": {"cifar100": {
            "resnet8": {"arch": "resnet8", "archive": "rel", "top1": 50.0,
                        "member": "cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth"},
            "resnet20": {"arch": "resnet20", "url": url_of_file, "sha256": None, "top1": 60.0}}},
    }
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


test_manifest.__test__ = False  # a helper, not a test


def test_resolve_downloads_a_release_tarball_once_and_extracts_the_teacher(server, tmp_path):
    member = checkpoint_bytes(create_model("resnet8", num_classes=100, family="cifar"))
    direct = checkpoint_bytes(create_model("resnet20", num_classes=100, family="cifar"))
    server.files["/rel/teachers.tar"] = release_tar({"cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth": member,
                                                     "cifar_teachers/other/ckpt.pth": b"z"})
    server.files["/resnet20.pth"] = direct
    manifest = test_manifest(tmp_path, server.url("/rel/teachers.tar"), server.url("/resnet20.pth"))
    cache = str(tmp_path / "cache")
    logged = []
    teacher = zoo.resolve("resnet8@cifar100", cache=cache, manifest=manifest, progress=False, log=logged.append)
    assert open(teacher.path, "rb").read() == member and "extracted" in logged[0]
    book = HashBook(os.path.join(cache, "hashes.json"))
    assert book.get(server.url("/rel/teachers.tar")) == sha(server.files["/rel/teachers.tar"])
    assert book.get(f"{server.url('/rel/teachers.tar')}#{teacher.member}") == sha(member)
    zoo.resolve("resnet8@cifar100", cache=cache, manifest=manifest, progress=False)
    assert len(server.requests) == 1  # the second use verifies the cached file, no download
    with open(teacher.path, "r+b") as fh:  # tampered in the cache
        fh.seek(200)
        fh.write(b"\x01" * 4)
    with pytest.raises(DownloadError, match="cached teacher .* refused"):
        zoo.resolve("resnet8@cifar100", cache=cache, manifest=manifest, progress=False)
    teacher = zoo.resolve("resnet8@cifar100", cache=cache, manifest=manifest, progress=False)  # re-extracted
    assert open(teacher.path, "rb").read() == member and len(server.requests) == 1
    other = zoo.resolve("resnet20@cifar100", cache=cache, manifest=manifest, progress=False)
    assert open(other.path, "rb").read() == direct and other.path.endswith(os.path.join("cifar100", "resnet20.pth"))


def test_resolve_offline_names_the_release_url_and_the_archive_path(tmp_path):
    url = closed_port_url("/rel/teachers.tar")
    manifest = test_manifest(tmp_path, url, closed_port_url())
    cache = str(tmp_path / "cache")
    with pytest.raises(DownloadError) as err:
        zoo.resolve("resnet8@cifar100", cache=cache, manifest=manifest, progress=False)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"cannot download {url}: ")
    archive = os.path.join(cache, "archives", "teachers.tar")
    assert f"put the file at {archive} by hand (sha256 not recorded yet)" in text


def test_own_teachers_register_by_card_and_resolve_by_name(tmp_path):
    cache = str(tmp_path / "cache")
    model = create_model("resnet8", num_classes=10, family="cifar")
    path = str(tmp_path / "run" / "best.pth")
    card = own_card(model)
    ckpt.save_atomic({"format": ckpt.FORMAT, "model": model.state_dict(), "card": card}, path)
    zoo_file = local.local_zoo_path(cache)
    assert local.register_local(card, path, name="mine", zoo_file=zoo_file) == "mine@synthetic"
    teacher = zoo.resolve("mine@synthetic", cache=cache)
    assert teacher.local and teacher.path == path and teacher.entry["weights_sha256"] == card["weights_sha256"]
    default = local.register_local(card, path, zoo_file=zoo_file)
    assert default == f"resnet8-{card['weights_sha256'][:8]}@synthetic"
    other = own_card(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(zoo.ZooError, match="already names"):
        local.register_local(other, path, name="mine", zoo_file=zoo_file)
    with pytest.raises(zoo.ZooError, match="is a published zoo teacher"):
        local.register_local(own_card(model, dataset="cifar100"), path, name="resnet32x4", zoo_file=zoo_file)
    with pytest.raises(zoo.ZooError, match=r"Did you mean 'mine'\?"):
        zoo.lookup("mien@synthetic", cache=cache)
    os.rename(path, path + ".moved")
    with pytest.raises(zoo.ZooError, match="no longer exists"):
        zoo.resolve("mine@synthetic", cache=cache)


# ---------------------------------------------------------------- the pre-flight check
class CountingEvaluation:
    """The classification task's own evaluation of a model on a real test loader, counted."""

    def __init__(self, loader):
        self.loader, self.calls = loader, 0
        self.task = TASKS.build("classification")

    def __call__(self, model):
        self.calls += 1
        return self.task.evaluate(model, self.loader, torch.device("cpu"))


@pytest.fixture
def trained():
    """A small real classifier fitted on 512 noisy samples of 4 classes (test top-1 well below 100)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 3, 4, 4, generator=g)

    def split(n):
        y = torch.randint(0, 4, (n,), generator=g)
        return centres[y] + 3.0 * torch.randn(n, 3, 4, 4, generator=g), y

    (x_train, y_train), (x_test, y_test) = split(512), split(400)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        opt.step()
    evaluation = CountingEvaluation(DataLoader(TensorDataset(x_test, y_test), batch_size=64, collate_fn=collate))
    top1 = evaluation(model)["top1"]
    evaluation.calls = 0
    assert 40 < top1 < 99.5, top1
    card = cards.make_card(model, arch="mlp", model_options={}, dataset="toy", num_classes=4, mean=(0, 0, 0),
                           std=(1, 1, 1), input_size=4, crop=4, top1=top1, top5=100.0, recipe={}, world_size=1,
                           batch_per_process=512, seed=0, code_version="test")
    return model, card, evaluation


KEY = {"dataset": "toy", "split": "test", "num_samples": 400, "mean": [0, 0, 0], "std": [1, 1, 1]}


def test_preflight_passes_a_correct_teacher_and_the_cache_skips_the_second_evaluation(trained, tmp_path):
    model, card, evaluation = trained
    first = pf.preflight(model, card, evaluation, KEY, str(tmp_path), log=lambda _: None)
    assert evaluation.calls == 1 and not first.cached
    assert first.measured_top1 == pytest.approx(card["top1"]) and first.teacher_sha256 == card["weights_sha256"]
    second = pf.preflight(model, card, evaluation, KEY, str(tmp_path), log=lambda _: None)
    assert evaluation.calls == 1 and second.cached and second.measured_top1 == first.measured_top1
    pf.preflight(model, card, evaluation, {**KEY, "split": "train"}, str(tmp_path), log=lambda _: None)
    assert evaluation.calls == 2  # another dataset key is another measurement


def test_preflight_refuses_a_teacher_whose_weights_changed_after_its_card(trained, tmp_path):
    model, card, evaluation = trained
    with torch.no_grad():
        model[1].bias[0] += 0.01
    with pytest.raises(pf.PreflightError) as err:
        pf.preflight(model, card, evaluation, KEY, str(tmp_path))
    text = str(err.value)
    assert "\n" not in text and "changed after its card was written" in text and card["weights_sha256"][:16] in text
    assert evaluation.calls == 0


def test_preflight_refuses_a_card_20_points_off_with_both_numbers(trained, tmp_path):
    model, card, evaluation = trained
    measured = card["top1"]
    wrong = {**card, "top1": measured - 20}
    with pytest.raises(pf.PreflightError) as err:
        pf.preflight(model, wrong, evaluation, KEY, str(tmp_path))
    text = str(err.value)
    assert "\n" not in text and f"{measured:.2f}%" in text and f"{measured - 20:.2f}%" in text
    assert "off by 20.00 > 0.5 points" in text and "another normalisation" in text
    result = pf.preflight(model, wrong, evaluation, KEY, str(tmp_path), tolerance=25, log=lambda _: None)
    assert result.cached and evaluation.calls == 1  # the refused run's measurement was kept


def test_preflight_against_a_published_number_names_another_file_as_a_cause(trained, tmp_path):
    model, card, evaluation = trained
    ok = pf.preflight(model, card["top1"] + 0.4, evaluation, KEY, str(tmp_path), log=lambda _: None)
    assert ok.expected_top1 == pytest.approx(card["top1"] + 0.4)
    with pytest.raises(pf.PreflightError, match="likely another file than the published one"):
        pf.preflight(model, card["top1"] + 0.6, evaluation, KEY, str(tmp_path))


def test_a_wrong_input_normalisation_is_what_the_check_catches(trained, tmp_path):
    """The same teacher fed inputs normalised with other statistics loses accuracy (79.5% -> 72.5%
    here) and is refused."""
    model, card, evaluation = trained
    x, y = evaluation.loader.dataset.tensors
    mean, std = torch.tensor([1.5, -1.5, 0.0]).view(1, 3, 1, 1), torch.tensor([0.4, 2.5, 1.0]).view(1, 3, 1, 1)
    other = CountingEvaluation(DataLoader(TensorDataset((x - mean) / std, y), batch_size=64, collate_fn=collate))
    with pytest.raises(pf.PreflightError, match="from its card, off by"):
        pf.preflight(model, card, other, {**KEY, "mean": [1.5, -1.5, 0], "std": [0.4, 2.5, 1]}, str(tmp_path))


def test_check_normalisation_says_same_renormalize_or_refuse():
    card = {"arch": "resnet32x4", "mean": list(CIFAR100_MEAN), "std": list(CIFAR100_STD), "input_size": 32}
    assert pf.check_normalisation(card, CIFAR100_MEAN, CIFAR100_STD).action == "same"
    imagenet_mean, imagenet_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    check = pf.check_normalisation(card, imagenet_mean, imagenet_std, input_size=32)
    assert check.action == "renormalize" and "\n" not in check.message and "0.5071" in check.message
    assert pf.check_normalisation({**card, "mean": None}, CIFAR100_MEAN, CIFAR100_STD).action == "refuse"
    assert pf.check_normalisation(card, CIFAR100_MEAN, CIFAR100_STD, input_size=224).action == "refuse"
    image = torch.rand(2, 3, 5, 5)
    as_dataset = (image - torch.tensor(imagenet_mean).view(1, 3, 1, 1)) / torch.tensor(imagenet_std).view(1, 3, 1, 1)
    as_teacher = (image - torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    from models.teacher_input import attach_teacher_input  # the one mechanism: a pre-hook on the teacher
    seen = {}
    probe = torch.nn.Identity()
    probe.register_forward_hook(lambda module, args, out: seen.update(x=out))
    handle = attach_teacher_input(probe, imagenet_mean, imagenet_std, check.teacher_mean, check.teacher_std)
    probe(as_dataset)
    handle.remove()
    torch.testing.assert_close(seen["x"], as_teacher)
