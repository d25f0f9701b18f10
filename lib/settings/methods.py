"""The methods as data: one record per method, looked up by the name a run records in config.json.

Each script picks its record (scripts/starsse.py: STARSSE, or STARSSE.frozen("stage4") with --freeze); the record's
name is written to config.json, its directory is the default --output_dir runs/<directory>/<dataset>-seed<seed>, its
place in METHODS orders the rows of the results tables as the thesis' do, and its fields say which analyses take it.
Nothing else in the repo recognises a method by its name's spelling.
"""
import dataclasses
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str                # what config.json records and the results table shows
    directory: str           # default run folder: runs/<directory>/<dataset>-seed<seed>
    family: str              # "scratch", "DE", "SSE" or "StarSSE": the thesis' groups of rows
    independent: bool        # members 2..M depend on model 1 at most: --member_parallel may train them apart
    cycles: bool = False     # members 2..M are cosine cycles restarted at --cycle_lr: the cycle-regime analyses
    phase1: bool = True      # member 1 is phase I (False: Standard SSE, whose first cycle is like every other)
    star: bool = False       # every cycle starts from model 1, so member 1 is in every subset (thesis table 6.1)
    reference: bool = False  # plain StarSSE: the time columns' denominator and the thesis' optimal-setting analyses
    frozen_stage: str = None  # the variant that trains only the stages from this one on (thesis section 5)

    def frozen(self, stage):
        """The frozen-stage variant: 'StarSSE (freeze stage4)', trained only from `stage` on."""
        return dataclasses.replace(self, name=f"{self.name} (freeze {stage})",
                                   directory=f"{self.directory}_freeze_{stage}", reference=False, frozen_stage=stage)


SCRATCH = Method("Scratch", "scratch", "scratch", independent=True)
SCRATCH_DE = Method("Scratch DE", "scratch_de", "scratch", independent=True)
FINE_TUNE = Method("Fine-tune", "fine-tune", "DE", independent=True)
LOCAL_DE = Method("Local DE", "local_de", "DE", independent=True)
GLOBAL_DE = Method("Global DE", "global_de", "DE", independent=True)
STANDARD_SSE = Method("Standard SSE", "standard_sse", "SSE", independent=False, cycles=True, phase1=False)
SSE = Method("SSE", "sse", "SSE", independent=False, cycles=True)
STARSSE = Method("StarSSE", "starsse", "StarSSE", independent=True, cycles=True, star=True, reference=True)
SSE_RTD = Method("SSE-RTD", "sse-rtd", "SSE", independent=False, cycles=True)
SSE_MSE = Method("SSE-MSE", "sse-mse", "SSE", independent=False, cycles=True)
STARSSE_RTD = Method("StarSSE-RTD", "starsse-rtd", "StarSSE", independent=True, cycles=True, star=True)
STARSSE_MSE = Method("StarSSE-MSE", "starsse-mse", "StarSSE", independent=True, cycles=True, star=True)
# members of the diversity losses look at earlier members, so they are trained one after another
STARSSE_CE_ALL = Method("StarSSE-CE (all)", "starsse-ce_all", "StarSSE", independent=False, cycles=True, star=True)
STARSSE_CE_INCORRECT = Method("StarSSE-CE (incorrect)", "starsse-ce_incorrect", "StarSSE", independent=False,
                              cycles=True, star=True)
STARSSE_WO = Method("StarSSE-WO", "starsse-wo", "StarSSE", independent=False, cycles=True, star=True)
STARSSE_WO_DELTA = Method("StarSSE-WO (delta)", "starsse-wo_delta", "StarSSE", independent=False, cycles=True,
                          star=True)

# in the thesis' row order
METHODS = (SCRATCH, SCRATCH_DE, FINE_TUNE, LOCAL_DE, GLOBAL_DE, STANDARD_SSE, SSE, STARSSE, SSE_RTD, SSE_MSE,
           STARSSE_RTD, STARSSE_MSE, STARSSE_CE_ALL, STARSSE_CE_INCORRECT, STARSSE_WO, STARSSE_WO_DELTA)
# a frozen variant's rows follow its method's, except frozen StarSSE's (thesis section 5), which follow the
# similarity regularisers' (section 4), as in the thesis' tables
FROZEN_ROWS_AFTER = {STARSSE.name: STARSSE_MSE}
BY_NAME = {m.name: m for m in METHODS}
_FROZEN = re.compile(r"(?P<base>.+) \(freeze (?P<stage>[\w.]+)\)")  # the one name Method.frozen writes


def get(name):
    """The record of the method a run recorded, or None for a name no script writes."""
    if name in BY_NAME:
        return BY_NAME[name]
    frozen = _FROZEN.fullmatch(str(name))
    if frozen and frozen["base"] in BY_NAME:
        return BY_NAME[frozen["base"]].frozen(frozen["stage"])
    return None


def directory(name):
    """Default folder of a method's runs under runs/ (a name outside the table: its lower-cased slug)."""
    method = get(name)
    return method.directory if method else re.sub(r"[^a-z0-9_.-]+", "_", str(name).lower()).strip("_")


def order(name):
    """Sort key of a method's rows: the thesis' order (a frozen variant right after its method), unknown last."""
    method = get(name)
    if method is None:
        return (len(METHODS), 1, str(name))
    if method.frozen_stage:
        base = _FROZEN.fullmatch(method.name)["base"]
        return (METHODS.index(FROZEN_ROWS_AFTER.get(base, BY_NAME[base])), 1, method.name)
    return (METHODS.index(method), 0, method.name)
