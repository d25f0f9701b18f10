"""StarSSE-WO (thesis section 6): StarSSE whose cycles 2..M add alpha * cos^2(w, w_j) between the flattened
weights of the current model and of an earlier member j (2..i-1) drawn for each batch; member 2 trains without it.

Unlike the reference implementation (whose weight vector was detached, so the term never changed training), the
gradient reaches w. --wo_space delta measures cos^2 between displacements from model 1 (w - w_1), since raw
weights of fine-tunes of one checkpoint have cos ~ 1.

    python scripts/starsse_wo.py --cpu --alpha 10                        # embedded default
    python scripts/starsse_wo.py --cpu --alpha 10 --wo_space delta
    accelerate launch scripts/starsse_wo.py --dataset cifar100 --data_dir data --pretrained byol-1000ep-1.pt \\
        --alpha -31.6     # thesis StarSSE-WO: 87.40 +- 0.16 % (with the reference's gradient-free term)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.infra.errors import cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
from lib.cli.parser import parse, script_parser  # noqa: E402
from lib.core.losses import WeightOrthogonality, compute_dtype  # noqa: E402
from lib.settings import methods  # noqa: E402
from lib.training.experiment import Experiment  # noqa: E402


def build_parser():
    return script_parser(__doc__, __file__)  # the common flags, --alpha, --wo_space (lib/settings/schema.py)


@cli_main
def main(argv=None):
    cfg = parse(build_parser(), lambda c: methods.STARSSE_WO if c.wo_space == "raw" else methods.STARSSE_WO_DELTA,
                argv)
    term = WeightOrthogonality(cfg.alpha, cfg.wo_space, cfg.seed)  # checks values first
    exp = Experiment(cfg)
    device, dtype = exp.accelerator.device, compute_dtype(exp.accelerator)

    w1 = exp.finetune(1)                                   # phase I: model 1 (cached, shared with StarSSE)
    term.add(1, exp.model(w1), device, dtype)              # the origin of --wo_space delta
    for i in range(2, cfg.members + 1):
        w = exp.cycle(i, init=w1, loss_terms={"wo": term})  # a ray from model 1, pushed towards orthogonality
        term.add(i, exp.model(w), device, dtype)           # each earlier member's weights held once
    exp.finish()


if __name__ == "__main__":
    main()
