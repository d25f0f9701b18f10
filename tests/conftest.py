import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
PY = sys.executable
ACCELERATE = os.path.join(os.path.dirname(PY), "accelerate")


def run_script(script, *args, env=None, cwd=REPO):
    """Run scripts/<script> in a fresh process; returns CompletedProcess with text output."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([PY, os.path.join(REPO, "scripts", script), *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=600)


def run_scripts(calls, env=None):
    """run_script for each (script, *args) of `calls`, two processes at a time (each mostly waits for its imports:
    bad-input tests fail before training); the results in the order of `calls`."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda call: run_script(*call, env=env), calls))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A cache dir holding tiny embedded pre-trained checkpoints (1 BYOL epoch each) for seeds 0 and 1."""
    from lib.training.pretrain import default_checkpoint, pretrain_digits
    cache = tmp_path_factory.mktemp("cache")
    for seed in (0, 1):
        pretrain_digits(default_checkpoint(str(cache), seed), seed=seed, epochs=1, verbose=False)
    return str(cache)


@pytest.fixture
def fresh_cache(cache_dir, tmp_path):
    """A new cache dir holding only the pre-trained checkpoints (no cached fine-tunes)."""
    def make(name="cache"):
        import shutil
        d = tmp_path / name
        shutil.copytree(os.path.join(cache_dir, "pretrained"), d / "pretrained")
        return str(d)
    return make


@pytest.fixture
def tiny(cache_dir):
    """Flags of a tiny but real run on the embedded default: 3 members, 2 phase-I epochs, 1-epoch cycles."""
    return ["--cpu", "--quiet", "--epochs", "2", "--cycle_epochs", "1", "--members", "3", "--cache_dir", cache_dir]


def settings(flags, method="check", script=None):
    """Resolved settings (lib.cli.parser.parse) of `flags` for a run of `method`, with the common flags (script=None)
    or those of scripts/<script>."""
    from lib.cli.parser import parse as parse_settings
    from lib.cli.parser import script_parser
    return parse_settings(script_parser("test", script), method, argv=[str(f) for f in flags])


def parse(flags, script=None):
    """The settings `flags` give, as scripts/<script>'s own parser reads them (script=None: the common flags), unset
    ones at their plain defaults (None where the dataset decides): a flag the script does not take fails (exit 2)."""
    import argparse

    from lib.cli.parser import given_settings, script_parser
    from lib.settings.schema import default
    parser = script_parser("test", os.path.basename(script) if script else None)
    given, _method = given_settings(parser, [str(f) for f in flags])
    return argparse.Namespace(**{**{k: default(f) for k, f in parser.settings.items()}, **given})


@pytest.fixture
def script_here(capsys, monkeypatch):
    """Run scripts/<name> in this process, as `python scripts/<name> args` would (the same main(), its exit status and
    output), without the seconds a fresh interpreter spends importing torch; returns a subprocess.CompletedProcess."""
    import runpy

    def call(name, *args):
        path = os.path.join(REPO, "scripts", name)
        monkeypatch.setattr(sys, "argv", [path, *map(str, args)])
        capsys.readouterr()
        code = 0
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as e:
            code = e.code or 0
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([path, *args], code, out, err)
    return call
