"""StarSSE (Sadrtdinov et al. 2023): phase I fine-tunes model 1; every later cycle starts again from model 1
(a "star" of independent rays), restarted at --cycle_lr and decayed by cosine over --cycle_epochs.

    python scripts/starsse.py --cpu                              # embedded default (digits, CPU)
    accelerate launch scripts/starsse.py --dataset cifar100 --data_dir data --pretrained byol-1000ep-1.pt \\
        --members 5 --cycle_lr 0.1 --cycle_epochs 12             # the paper's setup (87.41 +- 0.12 % in the thesis)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.cli import base_parser  # noqa: E402
from lib.errors import cli_main  # noqa: E402
from lib.experiment import Experiment  # noqa: E402


@cli_main
def main():
    args = base_parser(__doc__).parse_args()
    exp = Experiment(args, "StarSSE")

    w1 = exp.finetune(1)                      # phase I: model 1 (cached, shared with SSE and Local DE)
    for i in range(2, args.members + 1):
        exp.cycle(i, init=w1)                 # every ray starts again from model 1
    exp.finish()


if __name__ == "__main__":
    main()
