"""A plugin is a first-class method: the README example verbatim, and a plugin file that
registers a method (with an option), a model and a dataset, all used from the command line."""
import re
import textwrap

import pytest
import torch

from engine import cli, config
from engine.checkpoint import load, save_atomic
from models import create_model
from conftest import REPO

TINY = ["--dataset", "synthetic", "--data_opt", "train_size=64", "--data_opt", "test_size=16",
        "--batch_size", "16", "--num_workers", "0", "--no_tensorboard", "--epochs", "1"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "teacher.pth"
    torch.manual_seed(0)
    save_atomic({"arch": "resnet8", "model": create_model("resnet8", num_classes=10).state_dict()}, str(path))
    return str(path)


def readme_example():
    """The README's plugin file and its first command, as printed there."""
    text = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(# my_method.py\n.*?)```", text, re.S).group(1)
    command = re.search(r"```bash\n(python train_student.py --plugin my_method.py[^\n]*)\n", text).group(1)
    return code, command.split()[2:]  # drop "python train_student.py"


def test_the_readme_plugin_example_trains_with_its_option(tmp_path, teacher, monkeypatch, capsys):
    code, argv = readme_example()
    assert "--squash" in argv and "true" in argv
    (tmp_path / "my_method.py").write_text(code)
    monkeypatch.chdir(tmp_path)  # the command names my_method.py and teacher.pth relative to here
    (tmp_path / "teacher.pth").write_bytes(open(teacher, "rb").read())
    assert cli.student(argv + TINY + ["--save_dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "l2_hint(squash=True)" in out
    state = load(tmp_path / "run/latest.pth")
    assert state["distiller_name"] == "l2_hint" and state["distiller_options"] == {"squash": True}
    assert any(k.startswith("proj.") for k in state["distiller"])
    help_text = config.student_parser()
    with pytest.raises(SystemExit):
        config.parse(help_text, ["--plugin", "my_method.py", "--distill", "l2_hint", "--help"])
    shown = capsys.readouterr().out
    assert "options of --distill l2_hint" in shown and "compare tanh-squashed maps" in shown


PLUGIN = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.taps import TapPoint
from data import register_dataset
from distillers import Distiller, Option, register_distiller
from models import register_model


@register_distiller("pooled_cos")
class PooledCosine(Distiller):
    """1 - cosine of the pooled vectors, projected to a common width."""
    student_taps = ("pooled",)
    teacher_taps = ("pooled",)
    options = {"width": Option(8, "projection width", min=1)}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.s = nn.Linear(spec.student["pooled"][0], self.width)
        self.t = nn.Linear(spec.teacher["pooled"][0], self.width)

    def forward(self, s, t, batch=None):
        return {"cos": 1 - torch.cosine_similarity(self.s(s["pooled"]), self.t(t["pooled"])).mean()}


class Tiny(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, num_classes)

    def tap_points(self):
        return {"last_map": TapPoint("pool", "input"), "pooled": TapPoint("fc", "input"),
                "logits": TapPoint(""), "classifier": TapPoint("fc", "module")}

    def forward(self, x):
        return self.fc(self.pool(self.body(x)).flatten(1))


@register_model("tiny_plugin_net", family="cifar")
def tiny_plugin_net(num_classes=3):
    return Tiny(num_classes)


class Blobs(TensorDataset):
    num_classes = 3

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 3
        x = torch.randn(n, 3, 8, 8, generator=g) + y[:, None, None, None].float()
        super().__init__(x, y)
        self.targets = y.tolist()


@register_dataset("plugin_blobs", family="cifar", num_classes=3, input_size=8, mean=(0, 0, 0), std=(1, 1, 1))
def plugin_blobs(root, split, augment, **options):
    return Blobs(48 if split == "train" else 12, 0 if split == "train" else 1)
'''


def test_a_plugin_registers_a_method_a_model_and_a_dataset(tmp_path, capsys):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    base = ["--plugin", str(plugin), "--dataset", "plugin_blobs", "--batch_size", "8", "--num_workers", "0",
            "--no_tensorboard", "--epochs", "1"]
    assert cli.teacher(base + ["--model", "tiny_plugin_net", "--save_dir", str(tmp_path / "t")]) == 0
    assert cli.student(base + ["--model_s", "tiny_plugin_net", "--path_t", str(tmp_path / "t/latest.pth"),
                               "--distill", "pooled_cos", "--width", "5", "--save_dir", str(tmp_path / "s")]) == 0
    state = load(tmp_path / "s/latest.pth")
    assert state["distiller_options"] == {"width": 5} and state["distiller"]["s.weight"].shape == (5, 4)
    capsys.readouterr()
    code = cli.student(base + ["--model_s", "tiny_plugin_net", "--path_t", str(tmp_path / "t/latest.pth"),
                               "--distill", "pooled_cos", "--width", "0", "--save_dir", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "option width=0 is not accepted; expected an integer >= 1" in err


def test_a_plugin_brings_its_own_data_request_and_trains_with_it(tmp_path, teacher):
    """issue 20: a method in a file outside the package defines a new data request (a grey second view)
    with its own server; the run serves it (the DataLoader path: it needs the image), the method reads
    its taps in batch["gray"], and nothing in data/ or engine/ names it."""
    plugin = str(REPO / "tests" / "plugins" / "gray_view.py")
    argv = TINY + ["--plugin", plugin, "--distill", "gray_consistency", "--path_t", teacher, "--model_s", "resnet8",
                   "--save_dir", str(tmp_path / "run")]
    assert cli.student(argv) == 0
    import sys
    method = sys.modules["distillers_plugin_gray_view"].GrayConsistency
    assert method.seen and all(s == g == t for s, g, t in method.seen)  # both views, student and teacher
    state = load(tmp_path / "run" / "latest.pth")
    assert state["config"]["loader"] == "auto" and state["distiller_name"] == "gray_consistency"
    engine_and_data = [p.read_text() for d in ("engine", "data") for p in (REPO / d).rglob("*.py")]
    assert not any("GrayView" in text or "gray_consistency" in text for text in engine_and_data)


# ---------------------------------------------------------------- a plugin that cannot be loaded: one line, rc 2
BROKEN = {
    "syntax.py": ("x = 1\ny = (\n", r"--plugin syntax\.py: syntax error at syntax\.py:2: '\(' was never closed; "
                                    r"fix the file$"),
    "raises.py": ("import os\nraise RuntimeError('no GPU here')\n",
                  r"--plugin raises\.py: importing it raised RuntimeError: no GPU here at raises\.py:2; "
                  r"fix the plugin$"),
    "missing.py": ("import os\nimport no_such_module_xyz\n",
                   r"--plugin missing\.py: missing\.py:2 imports 'no_such_module_xyz', which is not installed; "
                   r"install the package that provides it or remove the import$"),
    "no_such_module": (None, r"--plugin no_such_module: no module named 'no_such_module' on the Python path; "
                             r"to load a file, give its path ending in \.py$"),
    "dotted_raises": ("x = {}\nx['key']\n", r"--plugin dotted_raises: importing it raised KeyError: 'key' at "
                                            r"dotted_raises\.py:2; fix the plugin$"),
    "taken.py": ("from distillers import Distiller, register_distiller\n\n\n@register_distiller('kd')\n"
                 "class MyKD(Distiller):\n    pass\n",
                 r"--plugin taken\.py \(taken\.py:4\): distiller 'kd' is already registered by "
                 r"distillers\.methods\.kd; choose another name or pass override=True to replace it$"),
}


@pytest.mark.parametrize("plugin", sorted(BROKEN))
def test_a_plugin_that_cannot_be_loaded_is_one_error_line(tmp_path, plugin):
    """The real train_student.py in a child process: exit code 2 and one ``error:`` line naming the
    plugin (file and line) and what to do, no traceback."""
    import os
    import subprocess
    import sys

    code, expected = BROKEN[plugin]
    if code is not None:
        (tmp_path / (plugin if plugin.endswith(".py") else plugin + ".py")).write_text(code)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}  # a dotted plugin is found on the Python path
    done = subprocess.run([sys.executable, str(REPO / "train_student.py"), "--plugin", plugin, "--path_t", "t.pth",
                           "--model_s", "resnet8"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("train_student.py: error: ") and re.search(expected, lines[0]), lines[0]


def test_a_plugin_that_failed_is_not_taken_for_loaded(tmp_path):
    """A second --plugin load of a file that raised raises again (it is not left half-imported)."""
    from engine.plugins import PluginError, load_plugins

    plugin = tmp_path / "flaky.py"
    plugin.write_text("raise ValueError('first')\n")
    for _ in range(2):
        with pytest.raises(PluginError, match=r"raised ValueError: first at .*flaky\.py:1"):
            load_plugins([str(plugin)])
