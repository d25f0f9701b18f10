"""An ensemble as one self-contained folder (scripts/export.py), which load_ensemble reads without the run:

    <out>/model.safetensors   every network's tensors (Ensemble.state_dict(): members.<i>.<key>)
    <out>/config.json         arch, classes, input transform, method, the run's settings and metrics.json, and the
                              sha256 of model.safetensors (written last: a folder without it is no export)
    <out>/README.md           the model card (lib/ensemble/card.py)
    <out>/model.onnx          with onnx: the averaged ensemble as one ONNX graph, checked against PyTorch

ONNX: torch.onnx.export's TorchScript exporter (dynamo=False; the dynamo exporter needs the onnxscript package,
which requirements.txt does not pin), opset ONNX_OPSET, a dynamic batch axis; the graph is kept only when
onnxruntime's outputs on real images are within ONNX_TOLERANCE of PyTorch's.
"""
import os
import warnings

import numpy as np
import onnx
import onnxruntime
import torch
import torch.nn as nn

from lib.ensemble.card import CARD, model_card, write_card
from lib.ensemble.load import CONFIG, WEIGHTS, export_config, is_export
from lib.infra.errors import UserError, check
from lib.infra.files import atomic_write, file_sha256, save_json, save_weights

ONNX_FILE = "model.onnx"
ONNX_OPSET = 17          # the first opset with LayerNormalization as one op (ViT, ConvNeXt)
ONNX_TOLERANCE = 1e-4    # largest absolute difference of a probability allowed between onnxruntime and PyTorch


def check_out(out):
    """Refuse an --out that holds something other than an earlier export (which is replaced), before anything is
    written."""
    check(not os.path.exists(out) or os.path.isdir(out), f"--out {out} exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out):
        check(is_export(out), f"--out {out} is not empty and holds no export: choose an empty or new folder")


class WithMembers(nn.Module):
    """The ensemble with both outputs, for ONNX: (mean probabilities, the networks' probabilities)."""

    def __init__(self, ens):
        super().__init__()
        self.ens = ens

    def forward(self, images):
        return self.ens(images, members=True)


def export_onnx(ens, path, inputs, opset=ONNX_OPSET, tolerance=ONNX_TOLERANCE):
    """Write `ens` (on the CPU) as one ONNX graph at `path`: input `images` (batch, 3, H, W), outputs `probs` (batch,
    classes) and `member_probs` (networks, batch, classes); then run it with onnxruntime on `inputs` (real images in
    the members' input form, a batch size other than the traced one) and compare with PyTorch. Returns the largest
    absolute difference; the file is written only when it is within `tolerance` (else UserError)."""
    model = WithMembers(ens).eval()
    inputs = inputs.float().cpu()
    with torch.inference_mode():
        expected = [t.numpy() for t in model(inputs)]
    result = {}

    def write(tmp):
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice and tracer warnings
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (inputs[:2],), tmp, dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["probs", "member_probs"],
                              dynamic_axes={"images": {0: "batch"}, "probs": {0: "batch"},
                                            "member_probs": {1: "batch"}})
        onnx.checker.check_model(tmp)
        session = onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = session.run(["probs", "member_probs"], {"images": inputs.numpy()})
        result["diff"] = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
        if not result["diff"] <= tolerance:
            raise UserError(f"the ONNX graph differs from PyTorch by {result['diff']:.2e} on {len(inputs)} test "
                            f"images (more than {tolerance:g}): {os.path.basename(path)} was not written")
    atomic_write(path, write)
    return result["diff"]


def export_ensemble(ens, out, onnx_inputs=None, checked_on=None):
    """Write the export folder of `ens` (see above) into `out`; onnx_inputs: real images (N, 3, H, W) in the members'
    input form to export and check the ONNX graph on (None: no ONNX file), described by `checked_on` in the card.
    config.json goes last. Returns the config."""
    check_out(out)
    os.makedirs(out, exist_ok=True)
    ens = ens.cpu().eval()
    if os.path.exists(os.path.join(out, CONFIG)):
        os.remove(os.path.join(out, CONFIG))  # the folder is no export until its new config is written
    config = export_config(ens)
    graph = None
    if onnx_inputs is not None:
        diff = export_onnx(ens, os.path.join(out, ONNX_FILE), onnx_inputs)
        graph = {"file": ONNX_FILE, "opset": ONNX_OPSET, "checked_on": checked_on or f"{len(onnx_inputs)} images",
                "max_abs_diff": diff}
    elif os.path.exists(os.path.join(out, ONNX_FILE)):
        os.remove(os.path.join(out, ONNX_FILE))  # an earlier export's graph is not this ensemble's
    save_weights(os.path.join(out, WEIGHTS), ens.state_dict())
    config.update(weights_sha256=file_sha256(os.path.join(out, WEIGHTS)), onnx=graph)
    write_card(os.path.join(out, CARD), model_card(ens.info, ens.class_names, ens.spec, out, exported=True,
                                                   onnx=graph))
    save_json(os.path.join(out, CONFIG), config)
    return config
