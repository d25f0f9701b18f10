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
from lib.infra.errors import cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
from lib.cli.parser import parse, script_parser  # noqa: E402
from lib.settings import methods  # noqa: E402
from lib.training.experiment import Experiment  # noqa: E402


def method(cfg):
    """Fine-tune (one model), Local DE (N fine-tunes of one checkpoint) or Global DE (one of each); from scratch too."""
    if cfg.pretrained == ["scratch"]:
        return methods.SCRATCH if cfg.members == 1 else methods.SCRATCH_DE
    return methods.GLOBAL_DE if len(cfg.pretrained) > 1 else (methods.LOCAL_DE if cfg.members > 1 else
                                                              methods.FINE_TUNE)


def build_parser():
    return script_parser(__doc__, __file__)  # the common flags; --members 1 unless given (lib/settings/schema.py)


@cli_main
def main(argv=None):
    cfg = parse(build_parser(), method, argv)
    exp = Experiment(cfg)

    for i in range(1, cfg.members + 1):
        exp.finetune(i, checkpoint=exp.checkpoints[(i - 1) % len(exp.checkpoints)])  # independent fine-tunes
    exp.finish()


if __name__ == "__main__":
    main()
