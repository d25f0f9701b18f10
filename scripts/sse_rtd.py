"""SSE-RTD / SSE-MSE (thesis section 4), and StarSSE-RTD / StarSSE-MSE with --star.

Phase I as in SSE; in cycles 2..M the loss is CE + alpha * D(f_w^e(x), f_w1^e(x)): D is the differentiable
Representation Topology Divergence (--similarity rtd) or MSE (--similarity mse) between the internal
representations of the current model and of model 1 (a frozen copy in eval mode, run without gradients on the same
augmented batch) at the chosen --layers. The thesis regularises the AvgPool output only.

    python scripts/sse_rtd.py --cpu                                        # SSE-RTD, embedded default
    python scripts/sse_rtd.py --cpu --similarity mse                       # SSE-MSE
    python scripts/sse_rtd.py --cpu --star --layers stage5:0.5 avgpool     # StarSSE-RTD, two layers
    accelerate launch scripts/sse_rtd.py --dataset cifar100 --data_dir data --pretrained byol-1000ep-1.pt \\
        --similarity rtd --alpha 0.0316        # thesis SSE-RTD: 87.36 +- 0.09 % (SSE-MSE, alpha 20: 87.37 +- 0.02 %)

Defaults reproduce the thesis: RTD on sqrt(d)-normalised distances of the whole batch, 50 most persistent H1
bars, the RTD-AE loss (--rtd_variant rtd-ae); --rtd_variant exact --rtd_normalize quantile gives true RTD.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.errors import cli_main, interrupt_quietly  # noqa: E402
interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
from lib.cli import base_parser, parse  # noqa: E402
from lib.experiment import Experiment  # noqa: E402
from lib.losses import FeatureSimilarity, parse_layers  # noqa: E402

THESIS_ALPHA = {("rtd", False): 0.0316, ("rtd", True): 0.0316, ("mse", False): 20.0, ("mse", True): 10.0}


@cli_main
def main():
    p = base_parser(__doc__)
    g = p.add_argument_group("similarity regulariser")
    g.add_argument("--similarity", choices=["rtd", "mse"], default="rtd")
    g.add_argument("--alpha", type=float, default=None,
                   help="weight of the term (thesis optima: RTD 0.0316; MSE 20 for SSE, 10 for StarSSE)")
    g.add_argument("--layers", nargs="+", default=["avgpool"],
                   help="any of stage2 stage3 stage4 stage5 avgpool, each optionally name:weight (default avgpool)")
    g.add_argument("--star", action="store_true", help="StarSSE-RTD / StarSSE-MSE: every cycle starts from model 1")
    g.add_argument("--reference", choices=["model1", "pretrained"], default="model1",
                   help="the representations to stay close to: model 1's (thesis) or the pre-trained checkpoint's "
                        "(thesis section 4's alternative); cycles 2..M only")
    g.add_argument("--rtd_card", type=int, default=50, help="most persistent H1 bars kept per direction")
    g.add_argument("--rtd_variant", choices=["rtd-ae", "exact"], default="rtd-ae")
    g.add_argument("--rtd_normalize", choices=["sqrt_dim", "quantile", "none"], default="sqrt_dim")
    g.add_argument("--rtd_overlap", choices=["on", "off"], default="off",
                   help="compute the barcodes in worker processes while the cross-entropy's backward runs, then add "
                        "the RTD term's own backward; the same loss and gradients as off. Off by default: the second "
                        "backward costs more than the overlap saves on a CPU (benchmarks/sse_rtd_step_cost.py), and "
                        "it is not yet measured on a GPU")
    cfg = parse(p, lambda a: ("StarSSE-" if a.star else "SSE-") + a.similarity.upper(),
                defaults=lambda a: {"alpha": THESIS_ALPHA[(a.similarity, a.star)]})
    layers = parse_layers(cfg.layers)
    reg = FeatureSimilarity(cfg.similarity, cfg.alpha, layers, cfg.rtd_card, cfg.rtd_variant,
                            None if cfg.rtd_normalize == "none" else cfg.rtd_normalize)  # checks values first
    exp = Experiment(cfg)

    w1 = exp.finetune(1)                                   # phase I: model 1 (cached, shared with the core runs)
    reference = exp.model(w1) if cfg.reference == "model1" else exp.pretrained_model()
    reg.set_reference(reference, exp.accelerator.device, cfg.rtd_overlap == "on")  # one frozen copy, in eval mode
    w = w1
    for i in range(2, cfg.members + 1):
        w = exp.cycle(i, init=w1 if cfg.star else w,        # SSE continues its trajectory; --star restarts from w1
                      loss_terms={cfg.similarity: reg}, taps=list(layers))
    exp.finish()


if __name__ == "__main__":
    main()
