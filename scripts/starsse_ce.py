"""StarSSE-CE (thesis section 6): StarSSE whose cycles 2..M push predictions away from an earlier member's:
loss = CE(f_w(x), y) - alpha * CE(f_w(x), argmax f_wj(x)), j an earlier member drawn at random for each batch
(members 2..i-1, as the reference; --include_first adds model 1). Member 2 therefore trains WITHOUT the term
unless --include_first. --mode all: every sample; --mode incorrect: only the samples member j gets wrong.

    python scripts/starsse_ce.py --cpu --mode incorrect --alpha 0.1       # embedded default
    accelerate launch scripts/starsse_ce.py --dataset cifar100 --data_dir data --pretrained byol-1000ep-1.pt \\
        --mode incorrect --alpha 0.1        # thesis StarSSE-CE (2): 87.44 +- 0.20 %, diversity 75.2
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.infra.errors import cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
from lib.cli.parser import parse, script_parser  # noqa: E402
from lib.core.losses import PredictionDiversity, compute_dtype  # noqa: E402
from lib.settings import methods  # noqa: E402
from lib.training.experiment import Experiment  # noqa: E402


def build_parser():
    return script_parser(__doc__, __file__)  # the common flags, --alpha, --mode, --include_first


@cli_main
def main(argv=None):
    cfg = parse(build_parser(), lambda c: methods.STARSSE_CE_ALL if c.mode == "all" else methods.STARSSE_CE_INCORRECT,
                argv)
    term = PredictionDiversity(cfg.alpha, cfg.mode, cfg.include_first, cfg.seed)  # checks values first
    exp = Experiment(cfg)
    device, dtype = exp.accelerator.device, compute_dtype(exp.accelerator)

    w1 = exp.finetune(1)                                   # phase I: model 1 (cached, shared with StarSSE)
    term.add(1, exp.model(w1), device, dtype)              # kept only with --include_first
    for i in range(2, cfg.members + 1):
        w = exp.cycle(i, init=w1, loss_terms={"ce_diversity": term})  # a ray from model 1, pushed from earlier rays
        term.add(i, exp.model(w), device, dtype)           # each earlier member held once, in eval mode
    exp.finish()


if __name__ == "__main__":
    main()
