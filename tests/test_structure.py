"""The shape of the code (lib/ has no import cycle, nothing imports a script) and the settings (parse, --config,
config.yaml, --report_to)."""
import ast
import glob
import os

import pytest
import yaml

from conftest import REPO, run_script, settings
from lib.errors import UserError


def _imports(path):
    """(module names imported anywhere in the file, lib-internal imports made inside a function)."""
    tree = ast.parse(open(path).read())
    names, nested = [], []
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        found = []
        if isinstance(node, ast.Import):
            found = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ("lib." if node.level else "") + (node.module or "")
            found = [base.rstrip(".")] if node.module else [f"lib.{a.name}" for a in node.names]
        names += found
        if found and id(node) not in top and any(n.startswith("lib") for n in found):
            nested += found
    return names, nested


def test_lib_has_no_import_cycle_and_imports_lib_modules_at_the_top():
    modules = {os.path.basename(p)[:-3]: p for p in glob.glob(os.path.join(REPO, "lib", "*.py"))}
    graph = {}
    for name, path in modules.items():
        names, nested = _imports(path)
        assert not nested, f"lib/{name}.py imports {nested} inside a function"
        graph[name] = {n.split(".")[1] for n in names if n.startswith("lib.") and n.split(".")[1] in modules} - {name}
    state = {}

    def visit(node, path):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join(path + [node])}"
        state[node] = "open"
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        state[node] = "done"
    for node in sorted(graph):
        visit(node, [])
    assert graph["seeding"] == set() and "train" not in graph["device_data"] | graph["data"]


def test_no_module_imports_a_script():
    scripts = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "scripts", "*.py"))}
    for path in glob.glob(os.path.join(REPO, "lib", "*.py")) + glob.glob(os.path.join(REPO, "scripts", "*.py")):
        names, _ = _imports(path)
        bad = [n for n in names if n.split(".")[0] in scripts | {"scripts"}]
        assert not bad, f"{path} imports the script(s) {bad}"


def test_settings_are_complete_and_read_only(tiny):
    cfg = settings(tiny + ["--cycle_lr_mult", "3", "--lr", "0.02"], "StarSSE")
    assert cfg.cycle_lr == pytest.approx(0.06) and cfg.arch == "resnet_mini" and cfg.method == "StarSSE"
    assert cfg.output_dir == os.path.join("runs", "starsse", "digits-seed0") and cfg.mixed_precision == "no"
    assert cfg.pretrained[0].endswith("digits-byol-seed0.safetensors")  # the embedded default, resolved
    with pytest.raises(AttributeError, match="read-only"):
        cfg.lr = 0.1
    assert cfg.replace(lr=0.1).lr == 0.1 and cfg.lr == 0.02


def test_config_file_with_command_line_overrides(tmp_path, tiny):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"lr": 0.03, "members": 2, "cycle_epochs": 5, "method": "StarSSE"}))
    cfg = settings(tiny + ["--config", path, "--members", "3"], "StarSSE")
    assert cfg.lr == 0.03 and cfg.members == 3  # the file's lr; the command line's members
    assert cfg.cycle_epochs == 1  # `tiny` gives --cycle_epochs 1 on the command line too
    with pytest.raises(UserError, match="holds a StarSSE run; this script runs SSE"):
        settings(["--config", path], "SSE")
    path.write_text(yaml.safe_dump({"learning_rate": 0.1}))
    with pytest.raises(UserError, match="unknown setting.*learning_rate"):
        settings(["--config", path], "SSE")
    with pytest.raises(UserError, match="file not found"):
        settings(["--config", tmp_path / "missing.yaml"], "SSE")


def test_a_run_is_repeated_from_its_config_yaml(tmp_path, cache_dir):
    out = tmp_path / "run"
    r = run_script("sse.py", "--cpu", "--quiet", "--epochs", "2", "--cycle_epochs", "1", "--members", "2",
                   "--cache_dir", cache_dir, "--output_dir", out)
    assert r.returncode == 0, r.stderr
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["method"] == "SSE" and written["epochs"] == 2 and written["members"] == 2
    again = tmp_path / "again"
    r = run_script("sse.py", "--config", out / "config.yaml", "--output_dir", again)
    assert r.returncode == 0, r.stderr
    import numpy as np
    for i in (1, 2):
        assert np.array_equal(np.load(out / f"member_{i}_probs.npy"), np.load(again / f"member_{i}_probs.npy"))


def test_report_to(tmp_path, tiny):
    from lib.experiment import Experiment
    exp = Experiment(settings(tiny + ["--members", "1", "--with_tracking", "--report_to", "none",
                                      "--output_dir", tmp_path / "none"], "Fine-tune"))
    exp.finetune(1)
    exp.finish()
    assert not (tmp_path / "none" / "tensorboard").exists()
    r = run_script("sse.py", *tiny, "--with_tracking", "--report_to", "wandb", "--output_dir", tmp_path / "w")
    assert r.returncode == 2 and "needs the wandb package" in r.stderr and not (tmp_path / "w").exists()


def test_every_flag_is_in_the_phase1_cache_key_or_declared_outside_it():
    """A new flag must be classified: either it changes a fine-tuned member (then it is part of the phase-I cache key,
    so a run with another value never reuses the cached member) or it does not."""
    from lib.cli import base_parser
    from lib.runs import NOT_PHASE1_KEYS, PHASE1_KEYS
    flags = set(vars(base_parser("t").parse_args([])))
    assert not set(PHASE1_KEYS) & set(NOT_PHASE1_KEYS)
    assert flags - set(PHASE1_KEYS) - set(NOT_PHASE1_KEYS) == set()
