"""Methods as data (lib/settings/methods.py): looked up by the name a run records, never matched by spelling."""
import conftest  # noqa: F401  (puts the repo on sys.path)

from lib.analysis import report as R
from lib.settings import methods as M


def test_records_are_found_by_name_and_frozen_variants_are_derived():
    assert M.get("StarSSE") is M.STARSSE and M.get("SSE-RTD") is M.SSE_RTD and M.get("StarSSEx") is None
    frozen = M.get("StarSSE (freeze stage3)")
    assert frozen == M.STARSSE.frozen("stage3") and frozen.frozen_stage == "stage3" and not frozen.reference
    assert frozen.directory == "starsse_freeze_stage3" and frozen.star and frozen.independent
    assert M.get("Local DE (freeze head)").family == "DE" and M.get("Nope (freeze head)") is None
    assert M.directory("My Method (x)") == "my_method_x"
    # what the analyses ask of a method is a field, not a spelling: Standard SSE has cycles, Local DE has none
    assert M.STANDARD_SSE.cycles and not M.LOCAL_DE.cycles and M.STARSSE_CE_ALL.star and not M.SSE.star
    assert [m for m in M.METHODS if m.reference] == [M.STARSSE]


def test_rows_follow_the_thesis_order_whatever_their_settings():
    """Frozen StarSSE rows after the similarity regularisers (as the demo table has always shown them), other frozen
    variants right after their method, unknown methods last; rows with settings sort by their method first."""
    names = ["Mystery", "StarSSE (freeze stage4)", "StarSSE-MSE", "Local DE (freeze head)", "StarSSE", "Local DE",
             "Scratch"]
    assert sorted(names, key=M.order) == ["Scratch", "Local DE", "Local DE (freeze head)", "StarSSE", "StarSSE-MSE",
                                          "StarSSE (freeze stage4)", "Mystery"]
    runs = []
    for i, (method, clr) in enumerate([("StarSSE", 0.1), ("SSE", 0.2), ("SSE", 0.1), ("Local DE", None)]):
        met = {"members": 2, "member_accuracy": [50.0, 60.0], "ensemble_accuracy_by_size": [50.0, 61.0]}
        runs.append((f"{method} cycle_lr={clr}" if clr else method, f"d{i}", {"method": method, "cycle_lr": clr}, met))
    assert list(R.summarize_groups(runs)) == ["Local DE", "SSE cycle_lr=0.1", "SSE cycle_lr=0.2",
                                              "StarSSE cycle_lr=0.1"]
