"""`layermatte completion bash`: the generated script, run in a real bash,
completes commands, each command's own options, subcommands and file names."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def _complete(script: str, *words: str, cwd=None) -> list[str]:
    words_q = " ".join(f"'{w}'" for w in ("layermatte", *words))
    body = (f'{script}\nCOMP_WORDS=({words_q}); COMP_CWORD={len(words)}; _layermatte; '
            'printf "%s\\n" "${COMPREPLY[@]}"')
    out = subprocess.run(["bash", "--norc", "-c", body], capture_output=True, text=True, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.fixture(scope="module")
def script() -> str:
    p = subprocess.run([sys.executable, "-m", "layermatte", "completion", "bash"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_commands_options_subcommands_and_files(script, tmp_path):
    assert _complete(script, "cu") == ["cut"]
    assert set(_complete(script, "")) >= {"serve", "stop", "cut", "psd", "batch", "--version"}
    assert _complete(script, "cut", "--bg") == ["--bg-color"]
    assert "--replace-masks" in _complete(script, "psd", "--")
    assert "--replace-masks" not in _complete(script, "cut", "--")
    assert _complete(script, "-v", "models", "p") == ["pull", "path"]
    (tmp_path / "photo.jpg").write_bytes(b"")
    assert _complete(script, "cut", "pho", cwd=tmp_path) == ["photo.jpg"]
    assert _complete(script, "models", "pull", "pho", cwd=tmp_path) == ["photo.jpg"]


def test_every_option_of_the_parser_is_offered(script):
    import argparse
    from layermatte.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        offered = set(_complete(script, name, "-"))
        wanted = {o for a in parser._actions for o in a.option_strings if o.startswith("-")}
        assert wanted <= offered, (name, wanted - offered)
