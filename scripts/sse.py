"""SSE, transfer-learning variant (Sadrtdinov et al. 2023): phase I fine-tunes model 1 with the optimal single-model
schedule; the same trajectory then continues for M-1 cosine cycles restarted at --cycle_lr; a snapshot at each
cycle's end. Ensemble = {model 1, snapshots 2..M}.
--standard: Standard SSE (Huang et al.'s snapshot ensembles from the pre-trained checkpoint, thesis figure 2.2):
every cycle, the first included, has the cycle schedule (--cycle_lr over --cycle_epochs); no phase I.

    python scripts/sse.py --cpu                                  # embedded default (digits, CPU)
    python scripts/sse.py --cpu --standard                       # Standard SSE
    accelerate launch scripts/sse.py --dataset cifar100 --data_dir data --pretrained byol-1000ep-1.pt \\
        --members 5 --cycle_lr 0.1 --cycle_epochs 12             # the paper's setup (87.11 +- 0.06 % in the thesis)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.infra.errors import cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
from lib.cli.parser import parse, script_parser  # noqa: E402
from lib.settings import methods  # noqa: E402
from lib.training.experiment import Experiment  # noqa: E402


def build_parser():
    return script_parser(__doc__, __file__)  # the common flags and --standard (lib/settings/schema.py)


@cli_main
def main(argv=None):
    cfg = parse(build_parser(), lambda c: methods.STANDARD_SSE if c.standard else methods.SSE, argv)
    exp = Experiment(cfg)

    # phase I: model 1 (cached, shared with StarSSE and Local DE); Standard SSE: a first cycle like every other
    w = exp.finetune(1, first_cycle=cfg.standard)
    for i in range(2, cfg.members + 1):
        w = exp.cycle(i, init=w)              # continue the same trajectory: cycle i starts where i-1 ended
    exp.finish()


if __name__ == "__main__":
    main()
