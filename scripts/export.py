"""Export a trained ensemble as one self-contained folder, which lib.ensemble.load.load_ensemble (and
scripts/predict.py) reads without the run folder or its data.

    python scripts/export.py runs/starsse/digits-seed0 --out exported/starsse
    python scripts/export.py runs/starsse/digits-seed0 --out exported/starsse --onnx          # and model.onnx
    python scripts/export.py runs/starsse/digits-seed0 --out exported/soup --soup uniform     # the run's soup

The folder: model.safetensors (every member's weights in one file), config.json (architecture, class names, input
transform, method, the run's settings and metrics, the weights' sha256), README.md (the model card) and, with
--onnx, model.onnx: the averaged ensemble as one ONNX graph (outputs probs and member_probs), kept only when
onnxruntime gives PyTorch's probabilities to 1e-4 on the run's first --check_images test images (or on the image
files given to --check_images). An --out holding anything but an earlier export is refused; an earlier export is
replaced.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.infra.errors import UserError, check, cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
import torch  # noqa: E402

from lib.cli.parser import Parser  # noqa: E402
from lib.data.tasks import load_task, test_loader  # noqa: E402
from lib.ensemble.export import ONNX_FILE, check_out, export_ensemble  # noqa: E402
from lib.ensemble.load import load_ensemble  # noqa: E402
from lib.ensemble.predict import image_files  # noqa: E402
from lib.ensemble.soup import MODES  # noqa: E402
from lib.settings.schema import Settings, saved_defaults  # noqa: E402

CHECK_IMAGES = 32   # test images the ONNX graph is checked on (a batch size other than the traced one, 2)


def build_parser():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run folder")
    p.add_argument("--out", required=True, help="the export folder (new, empty, or an earlier export)")
    p.add_argument("--soup", choices=MODES, default=None, help="export the run's soup (one network) instead")
    p.add_argument("--onnx", action="store_true", help=f"also write {ONNX_FILE}, checked with onnxruntime")
    p.add_argument("--check_images", nargs="*", default=None, metavar="PATH",
                   help=f"--onnx: check on these image files / folders instead of the run's first {CHECK_IMAGES} "
                        f"test images")
    return p


def test_images(ens, cfg, paths):
    """(images (N, 3, H, W) in the members' input form, what they are) for the ONNX check: the run's first test
    images in its own test transform, or the files `paths` through ens.transform."""
    if paths:
        source = image_files(paths)
        return torch.stack([ens.transform(source.image(i)) for i in range(len(source))]), \
            f"{len(source)} images given to --check_images"
    try:
        task = load_task(cfg)
    except UserError as e:
        raise UserError(f"--onnx checks the graph on the run's test images, which cannot be read ({e}); give "
                        f"--check_images FILES instead") from None
    x, _y = next(iter(test_loader(task.test, CHECK_IMAGES)))
    transform = getattr(task.test, "transform_batch", None)  # device pipeline: the test transform on a batch
    x = transform(x) if transform is not None else x
    return x, f"the first {len(x)} images of the run's test set"


@cli_main
def main(argv=None):
    a = build_parser().parse_args(argv)
    check(a.check_images is None or a.onnx, "--check_images is for --onnx")
    check_out(a.out)
    ens = load_ensemble(a.run_dir, soup=a.soup)  # every member checked against its record's digests
    images, checked_on = test_images(ens, Settings({**saved_defaults(), **ens.info["settings"]}),
                                     a.check_images) if a.onnx else (None, None)
    config = export_ensemble(ens, a.out, images, checked_on)
    what = f"the {a.soup} soup (members {ens.info['soup_members']})" if a.soup else f"{len(ens.members)} members"
    print(f"exported {ens.info['method']}: {what} of {ens.info['arch']} to {a.out}")
    if config["onnx"]:
        print(f"{ONNX_FILE}: onnxruntime matches PyTorch on {checked_on} (largest difference "
              f"{config['onnx']['max_abs_diff']:.2e})")


if __name__ == "__main__":
    main()
