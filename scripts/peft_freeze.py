"""Fine-tuning with frozen stages from the start (thesis section 5): Local DE / Global DE members that train only
the stages from --freeze on. The thesis found this costs single models dearly on CIFAR-100 (about 84 / 81 / 52 %
for stage4 / stage5 / head), unlike frozen StarSSE cycles (scripts/starsse.py --freeze, --cycle_lr_mult).

    python scripts/peft_freeze.py --freeze stage4 --members 4             # Local DE, frozen from the start
    python scripts/peft_freeze.py --freeze head --pretrained a.pt b.pt    # Global DE of linear probes
    accelerate launch scripts/peft_freeze.py --dataset cifar100 --data_dir data \\
        --pretrained byol-1000ep-1.pt --freeze stage5 --members 5
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.cli import add_freeze_args, base_parser  # noqa: E402
from lib.errors import check, cli_main  # noqa: E402
from lib.experiment import Experiment  # noqa: E402
from lib.models import frozen_modules  # noqa: E402


@cli_main
def main():
    parser = add_freeze_args(base_parser(__doc__), "freeze every stage before this one, from the start")
    parser.set_defaults(freeze="stage4")
    args = parser.parse_args()
    frozen_modules(args.freeze)
    checkpoints = args.pretrained or [None]
    if len(checkpoints) > 1:
        check(args.members in (None, len(checkpoints)),
              f"Global DE fine-tunes each checkpoint once: --members must equal the number of checkpoints ({len(checkpoints)})")
        args.members = len(checkpoints)
    args.members = args.members or 1
    kind = "Global DE" if len(checkpoints) > 1 else ("Local DE" if args.members > 1 else "Fine-tune")
    exp = Experiment(args, f"{kind} (freeze {args.freeze})", max_checkpoints=len(checkpoints),
                     member_parallel_ok=True)

    for i in range(1, args.members + 1):      # independent fine-tunes, frozen stages from the first step
        exp.finetune(i, checkpoint=exp.checkpoints[(i - 1) % len(exp.checkpoints)], freeze=args.freeze,
                     frozen_bn=args.frozen_bn)
    exp.finish()


if __name__ == "__main__":
    main()
