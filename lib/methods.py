"""The methods: display name -> default run directory -> row order of the results tables, in one table.

Each script names its method (scripts/starsse.py: "StarSSE", or "StarSSE (freeze stage4)" with --freeze); the name
is written to config.json, picks the default --output_dir runs/<directory>/<dataset>-seed<seed>, and orders the rows
of scripts/report.py as the thesis' tables do. `independent`: members 2..M depend on model 1 at most, so
--member_parallel may train them on different processes (StarSSE rays, DE members); SSE continues one trajectory and
the diversity losses look at earlier members, so their members must be trained one after another.
"""
# (name, directory, independent members), in the thesis' row order
METHODS = [
    ("Scratch", "scratch", True),
    ("Scratch DE", "scratch_de", True),
    ("Fine-tune", "fine-tune", True),
    ("Local DE", "local_de", True),
    ("Global DE", "global_de", True),
    ("Standard SSE", "standard_sse", False),
    ("SSE", "sse", False),
    ("StarSSE", "starsse", True),
    ("SSE-RTD", "sse-rtd", False),
    ("SSE-MSE", "sse-mse", False),
    ("StarSSE-RTD", "starsse-rtd", True),
    ("StarSSE-MSE", "starsse-mse", True),
    ("StarSSE (freeze stage4)", "starsse_freeze_stage4", True),
    ("StarSSE (freeze stage5)", "starsse_freeze_stage5", True),
    ("StarSSE (freeze head)", "starsse_freeze_head", True),
    ("StarSSE-CE (all)", "starsse-ce_all", False),
    ("StarSSE-CE (incorrect)", "starsse-ce_incorrect", False),
    ("StarSSE-WO", "starsse-wo", False),
    ("StarSSE-WO (delta)", "starsse-wo_delta", False),
]
_BY_NAME = {name: (k, directory, independent) for k, (name, directory, independent) in enumerate(METHODS)}


def _base(name):
    """A variant's table entry: 'StarSSE (freeze stage3)' -> 'StarSSE', 'Local DE (freeze head)' -> 'Local DE'."""
    name = str(name)
    while name not in _BY_NAME and " (" in name:
        name = name.rsplit(" (", 1)[0]
    return name


def directory(name):
    """Default folder of a method's runs under runs/ (a name outside the table: its lower-cased slug)."""
    if name in _BY_NAME:
        return _BY_NAME[name][1]
    return str(name).lower().replace(" ", "_").replace("(", "").replace(")", "")


def independent_members(name):
    """Whether members 2..M of the method depend on model 1 at most (member-parallel training allowed)."""
    base = _base(name)
    return base in _BY_NAME and _BY_NAME[base][2]


def order(label):
    """Sort key of a table row label ('StarSSE', 'StarSSE cycle_lr=0.1', 'Local DE (freeze head)'): the table's
    order of the longest method name the label starts with, then the label; unknown methods last."""
    name = next((m for m in sorted(_BY_NAME, key=len, reverse=True) if label == m or label.startswith(m + " ")), None)
    return (_BY_NAME[name][0] if name else len(METHODS), label)
