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
from lib.infra.errors import cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
from lib.cli.parser import parse, script_parser  # noqa: E402
from lib.settings import methods  # noqa: E402
from lib.training.experiment import Experiment  # noqa: E402


def method(cfg):
    kind = methods.GLOBAL_DE if len(cfg.pretrained) > 1 else (methods.LOCAL_DE if cfg.members > 1 else
                                                              methods.FINE_TUNE)
    return kind.frozen(cfg.freeze)


def build_parser():
    return script_parser(__doc__, __file__)  # the common flags, --freeze (stage4), --frozen_bn; --members 1


@cli_main
def main(argv=None):
    cfg = parse(build_parser(), method, argv)
    exp = Experiment(cfg)

    for i in range(1, cfg.members + 1):      # independent fine-tunes, frozen stages from the first step
        exp.finetune(i, checkpoint=exp.checkpoints[(i - 1) % len(exp.checkpoints)], freeze=cfg.freeze)
    exp.finish()


if __name__ == "__main__":
    main()
