import contextlib
import gc
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.environ.get("PYTEST_XDIST_WORKER"):  # before torch is imported: `make test`'s workers share the cores
    # (OpenMP threads beyond the cores spin and slow every worker down); the scripts the tests start inherit it
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                     // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))
sys.path.insert(0, REPO)
PY = sys.executable
ACCELERATE = os.path.join(os.path.dirname(PY), "accelerate")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: launches processes or trains whole runs; `make test-fast` leaves it out")


def pytest_collection_modifyitems(config, items):
    """The Slurm tests first: under `make test` (pytest-xdist, 2 workers, --dist loadgroup) they run on one worker,
    mostly waiting for the scheduler on one thread, while the other worker takes the rest of the suite."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("xdist_group") else 1)  # stable: the rest keep order


def needs_root(what):
    """Skip a test, with one line saying what it needs, unless run as root (CI runs as root: there, all run)."""
    return pytest.mark.skipif(os.geteuid() != 0, reason=f"needs root: {what}")


@contextlib.contextmanager
def mounted_tmpfs(path, options):
    """A tmpfs mounted at `path` (created) for the block (root only: see needs_root). Unmounted after it; if a file
    in it is still open, unmounted lazily all the same (never left behind) and the block fails: something leaked."""
    os.makedirs(path)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, f"could not mount a tmpfs at {path}: {r.stderr}"
    try:
        yield path
    finally:
        gc.collect()
        busy = subprocess.run(["umount", str(path)], capture_output=True, text=True).returncode != 0
        if busy:
            subprocess.run(["umount", "--lazy", str(path)])
    assert not busy, f"{path} was still in use when the block ended: a file in it was left open"


def run_script(script, *args, env=None, cwd=REPO, fresh=False):
    """Run scripts/<script> as `python scripts/<script> args` would; returns a CompletedProcess with text output.

    In this process (the same main(), exit status and output, without the ~5 s a fresh interpreter spends importing
    torch), unless `env` is given or fresh=True: then in a fresh process, for what only a process has (its own
    environment variables read at import, thread count, signals from outside, a launcher)."""
    if env is not None or fresh:
        return subprocess.run([PY, os.path.join(REPO, "scripts", script), *map(str, args)], capture_output=True,
                              text=True, env=dict(os.environ, **(env or {})), cwd=cwd, timeout=600)
    return _run_in_process(os.path.join(REPO, "scripts", script), [str(a) for a in args], cwd)


def _run_in_process(path, args, cwd):
    """runpy under the script's argv, folder and streams; everything a script may change in the process (working
    folder, environment, signal handlers, warning filters, sys.path, torch's threads, accelerate's singletons, the
    preemption flag) is put back afterwards, so that the next script starts as a fresh interpreter would."""
    import io
    import runpy
    import signal
    import traceback
    import warnings

    import torch
    from accelerate.state import AcceleratorState, GradientState

    from lib.infra import preemption
    out, err = io.StringIO(), io.StringIO()
    saved = dict(argv=sys.argv, path=list(sys.path), cwd=os.getcwd(), environ=dict(os.environ),
                 threads=torch.get_num_threads(),
                 handlers={s: signal.getsignal(s) for s in (signal.SIGINT, *preemption.SIGNALS)})
    code = 0
    AcceleratorState._reset_state(True)  # a test may have made an Accelerator of other settings in this process
    try:
        sys.argv = [path, *args]
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            _interpreter_warning_filters()  # a fresh interpreter's, not pytest's
            warnings.showwarning = lambda m, c, f, n, file=None, line=None: err.write(
                warnings.formatwarning(m, c, f, n, line))
            try:
                runpy.run_path(path, run_name="__main__")
            except SystemExit as e:
                if isinstance(e.code, str):  # sys.exit("message"): the interpreter prints it, status 1
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                _release_frames(e)
            except Exception as e:  # an uncaught exception: a traceback and status 1, as python prints it
                traceback.print_exc()
                code = 1
                _release_frames(e)
    finally:
        sys.argv, sys.path[:] = saved["argv"], saved["path"]
        os.chdir(saved["cwd"])
        os.environ.clear()
        os.environ.update(saved["environ"])
        torch.set_num_threads(saved["threads"])
        for s, h in saved["handlers"].items():
            signal.signal(s, h)
        preemption._requested.clear()
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    return subprocess.CompletedProcess([PY, path, *args], code, out.getvalue(), err.getvalue())


def tb_lrs(folder):
    """The learning rate at every iteration, [(step, lr)], from the TensorBoard event files of a run folder, over all
    of them (a run writes one per start of its tracker: per process start, per requeue)."""
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    found = {}
    for f in sorted(glob.glob(os.path.join(folder, "tensorboard", "**", "events*"), recursive=True)):
        ea = EventAccumulator(f)
        ea.Reload()
        if "train/lr" in ea.Tags()["scalars"]:
            found.update({e.step: round(e.value, 8) for e in ea.Scalars("train/lr")})  # float32 -> 0.02
    return sorted(found.items())


def signalled_at_start(script, sig, *args):
    """Run scripts/<script> in a fresh process that sends itself `sig` right after the script's interrupt_quietly()
    has installed its handlers, while the heavy libraries are still to be imported: the window a Ctrl-C or a
    scheduler's stop signal hits at start-up, reached every time (a sleep before the signal depends on the load)."""
    path = os.path.join(REPO, "scripts", script)
    code = (f"import os, runpy, sys; sys.path.insert(0, {REPO!r}); from lib.infra import errors; "
            f"real = errors.interrupt_quietly; "
            f"errors.interrupt_quietly = lambda: (real(), os.kill(os.getpid(), {int(sig)})); "
            f"sys.argv = {[path, *map(str, args)]!r}; runpy.run_path({path!r}, run_name='__main__')")
    return subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120)


def _release_frames(exc):
    """What a process's exit frees: the frames of a finished run's exception chain (a failed run's traceback keeps its
    locals, open files and mappings among them, alive until a garbage collection)."""
    import traceback
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__context__ or exc.__cause__


def _interpreter_warning_filters():
    """The warning filters `python script.py` starts with (Python's defaults, no -W)."""
    import warnings
    warnings.resetwarnings()
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")


def run_scripts(calls, env=None):
    """run_script for each (script, *args) of `calls`; the results in the order of `calls`."""
    return [run_script(*call, env=env) for call in calls]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A cache dir holding tiny embedded pre-trained checkpoints (1 BYOL epoch each) for seeds 0 and 1."""
    from lib.training.pretrain import default_checkpoint, pretrain_digits
    cache = tmp_path_factory.mktemp("cache")
    for seed in (0, 1):
        pretrain_digits(default_checkpoint(str(cache), seed), seed=seed, epochs=1, verbose=False)
    return str(cache)


def copy_pretrained(cache_dir, dest):
    """A new cache dir `dest` holding only cache_dir's pre-trained checkpoints (no cached fine-tunes)."""
    import shutil
    shutil.copytree(os.path.join(cache_dir, "pretrained"), os.path.join(dest, "pretrained"))
    return str(dest)


@pytest.fixture
def fresh_cache(cache_dir, tmp_path):
    """A new cache dir holding only the pre-trained checkpoints (no cached fine-tunes)."""
    return lambda name="cache": copy_pretrained(cache_dir, tmp_path / name)


# A StarSSE of 2 members on 120 digits (8 steps an epoch), for the tests that stop a run (kill -9, SIGTERM) at each
# new resume point and check that re-running ends identical to one uninterrupted run
INTERRUPTED = ["--cpu", "--quiet", "--epochs", "3", "--cycle_epochs", "2", "--members", "2", "--labels_per_class", "12"]


@pytest.fixture(scope="session")
def uninterrupted(cache_dir, tmp_path_factory):
    """The run of INTERRUPTED flags, never stopped (its own cache): the folder every interrupted run must equal."""
    root = tmp_path_factory.mktemp("uninterrupted")
    r = run_script("starsse.py", *INTERRUPTED, "--cache_dir", copy_pretrained(cache_dir, root / "cache"),
                   "--output_dir", root / "run")
    assert r.returncode == 0, r.stderr
    return root / "run"


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
def script_here():
    """run_script (in this process), as a fixture for the tests that name it."""
    return run_script
