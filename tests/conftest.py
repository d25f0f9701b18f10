import functools
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
import sys

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
    from lib.pretrain import default_checkpoint, pretrain_digits
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


def settings(flags, method="check", **kw):
    """Resolved settings (lib.cli.parse) of the base flags `flags` for a run of `method`."""
    from lib.cli import base_parser, parse as parse_settings
    return parse_settings(base_parser("test"), method, argv=[str(f) for f in flags], **kw)


def parse(flags, script=None):
    """Parse flags with the base parser (script=None) or with scripts/<script>'s own parser (parse_known_args
    on the base parser, then a check that the script accepts every flag)."""
    from lib.cli import base_parser
    flags = [str(f) for f in flags]
    if script is None:
        return base_parser("test").parse_args(flags)
    args, extra = base_parser("test").parse_known_args(flags)
    usage = _script_help(os.path.basename(script))
    for flag in extra:
        if flag.startswith("--"):
            assert flag in usage, f"{script} has no flag {flag}"
    return args


@functools.lru_cache(maxsize=None)
def _script_help(script):
    return subprocess.run([PY, os.path.join(REPO, "scripts", script), "--help"], capture_output=True, text=True,
                          timeout=120).stdout


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
