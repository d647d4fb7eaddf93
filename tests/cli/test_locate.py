"""Finding the agent's state dir without loading the YAML parser when the file cannot name one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nonstop.cli.locate import _may_set_state_dir, state_dir


@pytest.mark.parametrize("text, may", [
    ("app: a\nlisten: 127.0.0.1:8080\n", False),
    ("# state_dir: .nonstop   # a comment only\napp: a\n", False),
    ("  # state_dir: x\n", False),
    ("state_dir: /var/lib/x\n", True),
    ("app: a  # state_dir below\n", True),  # not sure: parse
    ('"state_dir": x\n', True),
    ("{app: a, state_dir: x}\n", True),
    ('"state\\x5Fdir": x\n', True),  # an escape could spell it
])
def test_only_a_file_that_cannot_name_state_dir_skips_the_parser(text, may):
    assert _may_set_state_dir(text) is may


def test_the_same_answer_with_and_without_the_parser(tmp_path):
    plain = tmp_path / "a" / "nonstop.yml"
    plain.parent.mkdir()
    plain.write_text("app: a\n# state_dir: elsewhere\n")
    named = tmp_path / "b" / "nonstop.yml"
    named.parent.mkdir()
    named.write_text("app: b\nstate_dir: run/state\n")
    for strict in (True, False):
        assert state_dir(plain, strict=strict) == plain.parent / ".nonstop"
        assert state_dir(named, strict=strict) == named.parent / "run/state"


def test_the_init_template_needs_no_parser_to_find_the_agent(tmp_path):
    subprocess.run([sys.executable, "-m", "nonstop", "init"], cwd=tmp_path, check=True, capture_output=True)
    assert not _may_set_state_dir((tmp_path / "nonstop.yml").read_text())
    code = ("import sys; from pathlib import Path; from nonstop.cli.locate import state_dir; "
            "print(state_dir(Path('nonstop.yml'), strict=False)); print('yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True)
    assert out.stdout.split() == [str(tmp_path / ".nonstop"), "False"]
