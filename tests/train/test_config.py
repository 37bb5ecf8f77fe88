"""`dino train` settings: values the trainer cannot use are refused in one line before any work (#19)."""

from __future__ import annotations

import pytest

from dino import cli
from dino.train.config import available_presets, load_config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=.nan", r"optim.lr=nan: must be at least 0"),
        ("optim.lr=-1e-3", r"optim.lr=-0.001: must be at least 0"),
        ("optim.epochs=0", r"optim.epochs=0: must be at least 1"),
        ("run.max_steps=-1", r"run.max_steps=-1: must be at least 0"),
        ("loss.teacher_temp=0", r"loss.teacher_temp=0.0: must be a number above 0"),
        ("optim.momentum_teacher=1.5", r"optim.momentum_teacher=1.5: must lie in \[0, 1\]"),
        ("run.log_every=0", r"run.log_every=0: must be at least 1"),
        ("crops.local_crops_scale=[0.5, 0.2]", r"crops.local_crops_scale=\(0.5, 0.2\): need 0 < min <= max <= 1"),
    ],
)
def test_unusable_values_are_refused(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config("cpu_small", None, [override])


def test_the_shipped_presets_are_valid() -> None:
    for preset in available_presets():
        load_config(preset, None, []).validate()


def test_broken_yaml_is_one_line(tmp_path) -> None:
    broken = tmp_path / "bad.yaml"
    broken.write_text("optim: [unclosed\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: not valid YAML") as error:
        load_config(None, str(broken), [])
    assert "\n" not in str(error.value)


def test_overrides_after_data_path_are_overrides(tmp_path, capsys) -> None:
    # `--data-path` takes several values, so argparse hands it the override; the CLI takes it back.
    folder = tmp_path / "photos"
    folder.mkdir()
    argv = ["train", "--preset", "cpu_small", "--data-path", str(folder), "optim.lr=-1", "--output-dir", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "config optim.lr=-1.0: must be at least 0" in capsys.readouterr().err
    argv = ["train", "--preset", "cpu_small", "--data-path", str(folder), "optim.lr=1e-3", "--print-config"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "lr: 0.001" in printed and str(folder) in printed and "optim.lr" not in printed
