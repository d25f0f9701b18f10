"""Fine-tune a pre-trained checkpoint: one model, a Local DE or a Global DE.

    python scripts/finetune.py                                   # one model (= phase I of SSE/StarSSE)
    python scripts/finetune.py --members 4                       # Local DE: 4 independent fine-tunes of one checkpoint
    python scripts/finetune.py --pretrained a.pt b.pt c.pt d.pt  # Global DE: member i fine-tunes checkpoint i
    python scripts/finetune.py --pretrained scratch --members 2  # the same from random initialisation
    accelerate launch scripts/finetune.py --dataset cifar100 --data_dir data --pretrained byol-1000ep-1.pt --members 5

Member i's randomness (data order, augmentation, fresh head) comes from (--seed, i), and every fine-tune is cached
by (checkpoint, seed, member, phase-I hyper-parameters): Local DE member 1 is the model 1 of SSE and StarSSE.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.cli import base_parser  # noqa: E402
from lib.errors import check, cli_main  # noqa: E402
from lib.experiment import Experiment  # noqa: E402


@cli_main
def main():
    parser = base_parser(__doc__)
    args = parser.parse_args()
    checkpoints = args.pretrained or [None]
    if len(checkpoints) > 1:  # Global DE: one member per pre-trained checkpoint
        check(args.members in (None, len(checkpoints)),
              f"Global DE fine-tunes each checkpoint once: --members must equal the number of checkpoints ({len(checkpoints)})")
        args.members = len(checkpoints)
        method = "Global DE"
    else:
        args.members = args.members or 1  # one model unless --members asks for a Local DE
        method = "Local DE" if args.members > 1 else "Fine-tune"
    if checkpoints == ["scratch"]:
        method = "Scratch" if args.members == 1 else "Scratch DE"
    exp = Experiment(args, method, max_checkpoints=len(checkpoints), member_parallel_ok=True)

    for i in range(1, args.members + 1):
        exp.finetune(i, checkpoint=exp.checkpoints[(i - 1) % len(exp.checkpoints)])  # independent fine-tunes
    exp.finish()


if __name__ == "__main__":
    main()
