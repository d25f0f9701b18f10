"""SSE-RTD / SSE-MSE (thesis section 4), and StarSSE-RTD / StarSSE-MSE with --star.

Phase I as in SSE; in cycles 2..M the loss is CE + alpha * D(f_w^e(x), f_w1^e(x)): D is the differentiable
Representation Topology Divergence (--similarity rtd) or MSE (--similarity mse) between the internal
representations of the current model and of model 1 (a frozen copy in eval mode, run without gradients on the same
augmented batch) at the chosen --layers. The thesis regularises the AvgPool output only. --reference pretrained
puts the pre-trained checkpoint (with model 1's fresh head) in model 1's place in cycles 2..M; --reference
pretrained_phase1 (the thesis code's "pretrain" mode) regularises phase I towards it too, so model 1 is trained
apart from the plain phase I (its cache key holds every setting of the term).

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
from lib.infra.errors import cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
from lib.cli.parser import parse, script_parser  # noqa: E402
from lib.core.losses import FeatureSimilarity, parse_layers  # noqa: E402
from lib.settings import methods  # noqa: E402
from lib.settings.schema import Similarity, settings_of  # noqa: E402
from lib.training.experiment import Experiment  # noqa: E402

METHOD = {("rtd", False): methods.SSE_RTD, ("mse", False): methods.SSE_MSE, ("rtd", True): methods.STARSSE_RTD,
          ("mse", True): methods.STARSSE_MSE}
# what a regularised phase I depends on: every setting of the term that changes a result (--star only decides where
# cycles 2..M start)
PHASE1_TERM_KEYS = [k for k, f in settings_of(Similarity).items() if f.metadata["result"] and k != "star"]


def build_parser():
    return script_parser(__doc__, __file__)  # the common flags and the similarity group (lib/settings/schema.py)


@cli_main
def main(argv=None):
    cfg = parse(build_parser(), lambda c: METHOD[(c.similarity, c.star)], argv)
    layers = parse_layers(cfg.layers)
    reg = FeatureSimilarity(cfg.similarity, cfg.alpha, layers, cfg.rtd_card, cfg.rtd_variant,
                            None if cfg.rtd_normalize == "none" else cfg.rtd_normalize)  # checks values first
    exp = Experiment(cfg)

    modes = dict(overlap=cfg.rtd_overlap == "on", pipeline=cfg.rtd_pipeline == "on")
    if cfg.reference == "pretrained_phase1":  # the term from phase I on: model 1 is a cache entry of its own
        reg.set_reference(exp.pretrained_model(), exp.accelerator.device, **modes)
        w1 = exp.finetune(1, loss_terms={cfg.similarity: reg}, taps=list(layers),
                          terms_key={k: getattr(cfg, k) for k in PHASE1_TERM_KEYS})
    else:
        w1 = exp.finetune(1)                               # phase I: model 1 (cached, shared with the core runs)
        reference = exp.model(w1) if cfg.reference == "model1" else exp.pretrained_model()
        reg.set_reference(reference, exp.accelerator.device, **modes)  # one frozen copy, in eval mode
    w = w1
    for i in range(2, cfg.members + 1):
        w = exp.cycle(i, init=w1 if cfg.star else w,        # SSE continues its trajectory; --star restarts from w1
                      loss_terms={cfg.similarity: reg}, taps=list(layers))
    exp.finish()


if __name__ == "__main__":
    main()
