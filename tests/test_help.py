"""What ``--help`` shows and what a mistyped command line is told: short enough to read, the chosen
method's options first, the method list on request, a near miss named."""
import pytest

from distillers import DISTILLERS
from engine import config


def _run(capsys, argv, parser=None):
    parser = parser or config.student_parser()
    with pytest.raises(SystemExit) as info:
        config.parse(parser, argv)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_plain_help_fits_a_screenful_or_two(capsys):
    code, out, _ = _run(capsys, ["--help"])
    lines = out.splitlines()
    assert code == 0
    assert lines[0].startswith("usage: ") and len(lines[0]) < 100, lines[0]
    assert len(lines) < 150, f"--help is {len(lines)} lines"
    assert max(len(line) for line in lines) <= 100
    assert "--list-methods" in out


def test_a_method_help_shows_its_options_first_with_its_default_weights(capsys):
    _, out, _ = _run(capsys, ["--distill", "dkd", "--help"])
    first_group = out.split("\n\n")[1]
    assert first_group.startswith("options of --distill dkd"), first_group[:80]
    assert "default weights: -r 1 -a 0 -b 1" in first_group
    assert "--dkd.beta" in out or "--beta" in out


def test_list_methods_names_every_registered_method(capsys):
    code, out, _ = _run(capsys, ["--list-methods"])
    assert code == 0
    listed = {line.split()[0] for line in out.splitlines()[1:] if line.startswith("  ") and line[2] != " "}
    missing = [name for name in DISTILLERS.names() if name not in listed]
    assert not missing, f"--list-methods leaves out {missing}"
    assert max(len(line) for line in out.splitlines()) <= 100
    entries = []
    for line in out.splitlines()[1:]:
        if line.startswith("  ") and line[2] != " ":
            entries.append(line.strip())
        elif line.strip():
            entries[-1] += " " + line.strip()
    cut = [e for e in entries if not e.endswith((".", ")"))]
    assert not cut, f"summaries cut mid-sentence: {cut}"  # a docstring's sentence spans lines


@pytest.mark.parametrize("typed,meant", [("--learning-rate", "--learning_rate"),
                                         ("--Epochs", "--epochs"), ("--batch_sise", "--batch_size")])
def test_a_near_miss_flag_is_named(capsys, typed, meant):
    code, _, err = _run(capsys, [typed, "0.1"] if "rate" in typed else [typed, "4"])
    assert code == 2
    assert f"unrecognized arguments: {typed}" in err and f"did you mean {meant}?" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_the_method_name_is_taken_in_any_case():
    args = config.parse(config.student_parser(), ["--distill", "DKD", "--path_t", "x.pth"])
    assert args.distill == "dkd"


def test_a_list_option_takes_values_separated_by_spaces():
    args = config.parse(config.student_parser(), ["--distill", "mlkd", "--mlkd_T", "3", "5", "--path_t", "x.pth"])
    assert list(args.method__mlkd_T) == [3, 5]
    same = config.parse(config.student_parser(), ["--distill", "mlkd", "--mlkd_T", "[3,5]", "--path_t", "x.pth"])
    assert list(same.method__mlkd_T) == [3, 5]
