"""Pre-train the embedded default's backbone: BYOL on the unlabelled digits pool (CPU, ~40 s).

    python scripts/pretrain.py --seed 0            # -> runs/cache/pretrained/digits-byol-seed0.safetensors
    python scripts/pretrain.py --seed 1            # an independent checkpoint, for Global DE

Each seed gives an independently pre-trained checkpoint in torchvision's key layout without `fc`, like the
BYOL ResNet-50 checkpoints of the paper. `--method supervised` pre-trains on the pool's labels instead.
The real setup starts from downloaded ImageNet checkpoints instead (docs/reproducing.md).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.infra.errors import check, cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
from lib.cli.parser import Parser  # noqa: E402
from lib.training.pretrain import BYOL_DEFAULTS, default_checkpoint, pretrain_digits  # noqa: E402


@cli_main
def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="pre-training seed (one checkpoint per seed)")
    p.add_argument("--method", choices=["byol", "supervised"], default="byol")
    p.add_argument("--epochs", type=int, default=BYOL_DEFAULTS["epochs"])
    p.add_argument("--cache_dir", default="runs/cache", help="where the default checkpoint path lives")
    p.add_argument("--output", default=None, help="checkpoint path (default <cache_dir>/pretrained/digits-<method>-seed<seed>.safetensors)")
    p.add_argument("--force", action="store_true", help="pre-train again even if the checkpoint exists")
    args = p.parse_args()
    check(args.epochs > 0, f"--epochs must be positive, got {args.epochs}")
    out = args.output or default_checkpoint(args.cache_dir, args.seed, args.method)
    if os.path.exists(out) and not args.force:
        print(f"{out} exists (use --force to pre-train again)")
        return
    pretrain_digits(out, seed=args.seed, method=args.method, epochs=args.epochs)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
