"""The shape of the code (lib/ has no import cycle, nothing imports a script) and the settings (parse, --config,
config.yaml, --report_to)."""
import ast
import glob
import os

import pytest
import yaml
from conftest import REPO, run_script, settings

from lib.infra.errors import UserError

# lib's packages, lowest first: a module imports only from its own package and the packages before it
LAYERS = ["infra", "settings", "runs", "models", "data", "core", "evaluation", "ensemble", "training", "analysis",
          "cli"]


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
            assert not node.level, f"{path}: relative import (lib imports are absolute: from lib.<package>...)"
            found = [f"{node.module}.{a.name}" if node.module in ("lib", *(f"lib.{p}" for p in LAYERS)) else
                     node.module for a in node.names]
        names += found
        if found and id(node) not in top and any(n.startswith("lib") for n in found):
            nested += found
    return names, nested


def _lib_modules():
    return {os.path.relpath(p, REPO)[:-3].replace(os.sep, "."): p
            for p in glob.glob(os.path.join(REPO, "lib", "*", "*.py")) if not p.endswith("__init__.py")}


def test_lib_is_packages_whose_imports_point_down_and_have_no_cycle():
    assert sorted(glob.glob(os.path.join(REPO, "lib", "*.py"))) == [os.path.join(REPO, "lib", "__init__.py")]
    packages = {os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(REPO, "lib", "*", "__init__.py"))}
    assert packages == set(LAYERS)
    modules = _lib_modules()
    graph = {}
    for name, path in modules.items():
        names, nested = _imports(path)
        assert not nested, f"{path} imports {nested} inside a function"
        deps = {m for n in names for m in modules if n == m or n.startswith(m + ".")} - {name}
        for dep in deps:  # down only: from its own package or a lower one
            assert LAYERS.index(dep.split(".")[1]) <= LAYERS.index(name.split(".")[1]), f"{name} imports {dep} (up)"
        graph[name] = deps
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
    assert graph["lib.infra.seeding"] == set()


def test_no_module_imports_a_script():
    scripts = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "scripts", "*.py"))}
    for path in list(_lib_modules().values()) + glob.glob(os.path.join(REPO, "scripts", "*.py")):
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


def test_report_to_turns_tracking_on_and_none_turns_it_off(tmp_path, tiny):
    """--report_to X turns tracking on (TensorBoard events written); --report_to none with --with_tracking would log
    nothing, so it is refused; a tracker that is not installed is refused before anything is written."""
    from lib.training.experiment import Experiment
    cfg = settings(tiny + ["--members", "1", "--report_to", "tensorboard", "--output_dir", tmp_path / "tb"], "Fine-tune")
    assert cfg.with_tracking and not settings(tiny + ["--report_to", "none"]).with_tracking
    exp = Experiment(cfg)
    exp.finetune(1)
    exp.finish()
    assert any(f.startswith("events.out.tfevents") for _r, _d, fs in os.walk(tmp_path / "tb" / "tensorboard")
               for f in fs)
    with pytest.raises(UserError, match="would log nothing"):
        settings(tiny + ["--with_tracking", "--report_to", "none"])
    r = run_script("sse.py", *tiny, "--report_to", "wandb", "--output_dir", tmp_path / "w")
    assert r.returncode == 2 and "needs the wandb package" in r.stderr and not (tmp_path / "w").exists()


def test_every_setting_is_classified_in_the_schema():
    """A new setting must say whether it keys the phase-I cache (it changes a fine-tuned member) and whether it
    changes a result; every flag of every training script comes from the schema, and nothing else defines one."""
    from lib.cli.parser import script_parser
    from lib.settings import schema
    for name, f in schema.ALL.items():
        assert isinstance(f.metadata["phase1"], bool) and isinstance(f.metadata["result"], bool), name
        assert f.metadata["help"], name
    assert set(schema.PHASE1_KEYS) <= set(schema.ALL) and not set(schema.PHASE1_KEYS) & schema.NON_RESULT_KEYS
    for script in schema.SCRIPTS:
        parser = script_parser("t", script)
        dests = {a.dest for a in parser._actions} - {"help"}
        assert dests == set(parser.settings), script


def test_flag_reference_is_generated_from_the_schema():
    """docs/flags.md is what `python -m lib.settings.schema` prints: regenerate it when a setting changes."""
    from lib.settings import schema
    with open(os.path.join(REPO, "docs", "flags.md")) as f:
        assert f.read() == schema.markdown(), "docs/flags.md is stale: python -m lib.settings.schema > docs/flags.md"
