"""The command line of every training script, derived from the settings schema (lib/settings/schema.py), and
`parse`, which turns a command line and an optional YAML file into complete, checked, read-only settings before
anything is built or written.

    parser = script_parser(__doc__, __file__)     # the script's groups of lib/settings/schema.py SCRIPTS
    cfg = parse(parser, "StarSSE")                # every default filled, every value checked, nothing written yet
    exp = Experiment(cfg)

`--config FILE` (YAML, e.g. a run's config.yaml) goes through the same parser as the command line: each `name: value`
becomes `--name value` (a list, several values; a boolean, the flag or nothing), so a wrong type, an unknown choice
or an unknown key is one line and exit 2, as on the command line, which overrides the file. A setting left unset
takes its script's default, then its dataset's, then the few derived ones (`resolve`).
"""
import argparse
import math
import os
import re
import sys

import yaml

from lib.data import tasks as data
from lib.infra.errors import UserError, check
from lib.models import backbones, checkpoints
from lib.settings import methods, schema
from lib.settings.schema import CYCLE_EPOCHS_RATIO, CYCLE_LR_RATIO, Settings
from lib.training.pretrain import default_checkpoint


class Parser(argparse.ArgumentParser):
    """argparse with bad input reported as one line ('error: ...') and exit status 2, like every other check."""

    context = ""  # what is being parsed when it is not the command line ("--config FILE: ")

    def error(self, message):
        message = self.context + message
        choice = re.fullmatch(r"(.*)argument (--\w+): invalid choice: (\S+) \(choose from (.*)\)", message)
        if choice:  # "unknown --freeze 'fc7' (choose from none, stage2, ...)"
            where, flag, value, options = choice.groups()
            self.exit(2, f"error: {where}unknown {flag} {value} (choose from {options.replace(chr(39), '')})\n")
        self.exit(2, f"error: {message} (see --help)\n")


def runs_parser(description, out, run_dirs_nargs="+"):
    """The parser of every script that reads saved runs: run directories, --group_by and --out."""
    p = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs=run_dirs_nargs, help="run directories, or folders holding them")
    p.add_argument("--group_by", nargs="+", default=["method"],
                   help="config keys that define a group, i.e. a table row (method first)")
    p.add_argument("--out", default=out, help="output folder")
    return p


def _help(f):
    """A flag's help: the schema's text and its default."""
    m = f.metadata
    per = m["per_dataset"]
    if per is not None:
        shown = ", ".join(f"{'others' if d == '*' else d}: {v}" for d, v in per.items())
    else:
        value = schema.default(f)
        shown = None if value is None or isinstance(value, bool) else \
            (" ".join(map(str, value)) if isinstance(value, list) else value)
    return m["help"] + (f" (default: {shown})" if shown is not None else "")


def add_settings(parser, group):
    """The flags of one schema group. Unset flags stay out of the namespace (SUPPRESS), so that `parse` knows what
    was given and fills the rest from the defaults."""
    g = parser.add_argument_group(group.__doc__)
    for f in schema.fields(group):
        m, kind = f.metadata, schema.element_type(f)
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=_help(f).replace("%", "%%"))
        if kind is bool:
            kw["action"] = "store_false" if schema.default(f) else "store_true"
        else:
            kw.update(type=kind, metavar=m["metavar"])
            if m["choices"]:
                kw["choices"] = m["choices"]
            if m["many"] == "+":
                kw["nargs"] = "+"
            elif m["many"] == "append":
                kw["action"] = "append"
        g.add_argument(schema.flag_of(f), **kw)


def script_parser(description, script=None):
    """The parser of a training script: the common groups and the script's own (schema.SCRIPTS[basename(script)]);
    script=None: the common groups only."""
    p = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.script = schema.SCRIPTS[os.path.basename(script)] if script else schema.Script()
    p.settings = schema.settings_of(*schema.COMMON, *p.script.groups)
    for group in schema.COMMON + p.script.groups:
        add_settings(p, group)
    return p


# ----------------------------------------------------------------------------------------------------------------
# settings

def _config_tokens(parser, path):
    """The command-line tokens that say what the YAML file at `path` says (UserError on a file that is no mapping of
    known settings), and the method it records (config.yaml of a run)."""
    check(os.path.isfile(path), f"--config {path}: file not found")
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"--config {path} could not be read ({str(e).splitlines()[0]})")
    check(isinstance(values, dict), f"--config {path} must hold a mapping of setting names to values")
    unknown = sorted(map(str, set(values) - set(parser.settings) - {"method"}))
    check(not unknown, f"--config {path}: unknown setting(s) {', '.join(unknown)} for this script")
    tokens = []
    for name, value in values.items():
        if name in ("method", "config") or value is None:  # None: unset, as on a command line without the flag
            continue
        f = parser.settings[name]
        flag, many, kind = schema.flag_of(f), f.metadata["many"], schema.element_type(f)
        if kind is bool:
            check(isinstance(value, bool), f"--config {path}: {name} must be true or false, got {value!r}")
            if value != schema.default(f):
                tokens.append(flag)
            continue
        if many:
            items = value if isinstance(value, list) else [value]
        else:
            check(not isinstance(value, (list, dict)), f"--config {path}: {name} takes one value, got {value!r}")
            items = [value]
        for item in items:  # argparse converts each value as it does the command line's
            check(not isinstance(item, (list, dict)), f"--config {path}: {name} takes {kind.__name__} values, got "
                                                      f"{item!r}")
        if many == "+":
            tokens += [flag, *map(str, items)]
        else:
            tokens += [f"{flag}={item}" for item in items]
    return tokens, values.get("method")


def given_settings(parser, argv):
    """{name: value} of the settings given: those of `--config FILE`, overridden by the command line's."""
    cli = vars(parser.parse_args(argv))
    if not cli.get("config"):
        return cli, None
    tokens, method = _config_tokens(parser, cli["config"])
    parser.context = f"--config {cli['config']}: "
    try:
        from_file = vars(parser.parse_args(tokens))
    finally:
        parser.context = ""
    return {**from_file, **cli}, method


def resolve(values, given, dataset):
    """Fill in what was not given, in place: the dataset's defaults, then the cycle settings from phase I by the
    paper's ratios (thesis table 4.1: 2x the lr, 0.5x the epochs), unless set."""
    for name in values:
        if values[name] is None and name not in given and name in schema.ALL:
            value = schema.dataset_default(name, dataset)
            values[name] = min(value, os.cpu_count() or 1) if name == "num_workers" and value else value
    if "cycle_lr" not in values:
        return
    derived = {"cycle_lr": lambda ratio: ratio * values["lr"],
               "cycle_epochs": lambda ratio: max(1, int(ratio * values["epochs"]))}
    for key, ratio, of in (("cycle_lr", CYCLE_LR_RATIO, "lr"), ("cycle_epochs", CYCLE_EPOCHS_RATIO, "epochs")):
        mult = values.get(f"{key}_mult")
        value = derived[key](mult if mult is not None else ratio)
        # both given (e.g. a run's config.yaml records both): they must agree, else one would be dropped silently
        check(values[key] is None or mult is None or math.isclose(values[key], value, rel_tol=1e-9),
              f"--{key} {values[key]} and --{key}_mult {mult} disagree ({mult} x --{of} {values[of]} gives {value}): "
              f"give one of the two")
        if values[key] is None:
            values[key] = value


def parse(parser, method, argv=None):
    """Complete, checked, read-only settings of one run (nothing is built or written here).

    parser: script_parser(...); method: the method's record (lib/settings/methods.py), or a function of the settings
    that returns it. The steps read in the order the settings are resolved: given (file, then command line), the
    script's defaults, the dataset's, the derived cycle settings, tracking, the checks, the method and its folder.
    """
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    given, config_method = given_settings(parser, argv)
    values = {name: schema.default(f) for name, f in parser.settings.items()}
    values.update(given)
    given = set(given)
    script = parser.script
    paths = values["pretrained"] or []
    if script.checkpoints == 1:
        check(len(paths) <= 1, f"--pretrained takes 1 checkpoint here, got {len(paths)}")
    elif len(paths) > 1:  # Global DE: one member per pre-trained checkpoint
        check("members" not in given or values["members"] == len(paths),
              f"Global DE fine-tunes each checkpoint once: --members must equal the number of checkpoints "
              f"({len(paths)})")
        values["members"] = len(paths)
        given.add("members")
    for key, value in script.defaults.items():  # the script's own defaults, before the dataset's
        if key not in given:
            values[key] = value(values) if callable(value) else value
    for key in ("cycle_lr_mult", "cycle_epochs_mult"):
        value = values.get(key)
        check(value is None or math.isfinite(value) and value > 0, f"--{key} must be positive, got {value}")
    resolve(values, given, values["dataset"])
    if values["report_to"] is not None:  # a tracker turns tracking on; none with --with_tracking would log nothing
        check(values["report_to"] != "none" or not values["with_tracking"],
              "--with_tracking with --report_to none would log nothing: drop one of the two")
        values["with_tracking"] = values["report_to"] != "none"
    elif values["with_tracking"]:
        values["report_to"] = "tensorboard"
    args = argparse.Namespace(**values)
    if args.list_stages:  # print --arch's stages at --image_size and stop, before anything is checked or written
        backbones.check_input_size(args.arch, args.image_size, args.drop_path)
        print(backbones.describe_stages(args.arch, args.image_size, {"cifar100": 100}.get(args.dataset, 10)))
        raise SystemExit(0)
    _validate(args)
    data.check_settings(args)  # the data flags of --dataset (lib/data/tasks.py)
    checkpoints.check_settings(args)  # --arch, --pretrained, stage names (lib/models/checkpoints.py)
    for spec in (args.ood_dataset or []) + (args.shift_dataset or []):  # opened by Experiment before training
        data.check_eval_spec(spec)
    if args.mixed_precision is None:  # as accelerate resolves it: the launch config's (passed on in the environment)
        args.mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if args.pretrained is None:
        check(args.dataset == "digits", f"--pretrained is required for --dataset {args.dataset} "
                                        f"(e.g. a BYOL ResNet-50 checkpoint such as byol-1000ep-1.pt)")
        args.pretrained = [default_checkpoint(args.cache_dir, 0)]  # the embedded checkpoint (Experiment creates it)
    chosen = method(args) if callable(method) else method  # a lib.settings.methods.Method (a name in tests)
    args.method = chosen.name if isinstance(chosen, methods.Method) else chosen
    record = methods.get(args.method)
    check(config_method in (None, args.method),
          f"--config {args.config} holds a {config_method} run; this script runs {args.method}")
    check(args.member_parallel is False or record is not None and record.independent,
          f"--member_parallel: {args.method} members depend on earlier members, so they cannot be trained in "
          f"parallel (it is for StarSSE, StarSSE-RTD/MSE, frozen StarSSE and Local/Global DE)")
    if args.output_dir is None:
        args.output_dir = os.path.join("runs", methods.directory(args.method), f"{args.dataset}-seed{args.seed}")
    return Settings(vars(args))


def _validate(args):
    for key in ("epochs", "members", "cycle_epochs", "batch_size", "eval_batch_size", "image_size"):
        check(getattr(args, key) > 0, f"--{key} must be positive, got {getattr(args, key)}")
    for key in ("lr", "cycle_lr", "weight_decay", "momentum"):  # lr first: the default cycle lr derives from it
        value = getattr(args, key)
        check(math.isfinite(value) and value >= 0, f"--{key} must be a non-negative number, got {value}")
        if key in ("lr", "cycle_lr"):  # the largest SGD step, lr / (1 - momentum), must be a number
            check(args.momentum < 1 and math.isfinite(value / (1 - args.momentum)),
                  f"--{key} {value} with --momentum {args.momentum} gives steps that overflow")
        check(key != "lr" or value > 0, f"--lr must be positive, got {value}")
    check(args.seed >= 0, f"--seed must be >= 0, got {args.seed}")
    check(args.num_workers >= 0, f"--num_workers must be >= 0, got {args.num_workers}")
    for key in ("output_dir", "cache_dir"):
        if getattr(args, key) is not None:
            _check_folder_path(getattr(args, key), f"--{key}")
    if args.with_tracking and args.report_to == "wandb":
        import importlib.util
        check(importlib.util.find_spec("wandb") is not None,
              "--report_to wandb needs the wandb package (pip install wandb)")


def _check_folder_path(path, flag):
    """`path` is a folder or can become one: neither it nor any folder above it is a file."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    check(os.path.isdir(probe), f"{flag} {path}: {probe} is a file, not a folder")
