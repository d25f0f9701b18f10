"""Using a trained ensemble (issue 27): load_ensemble reproduces metrics.json, scripts/predict.py on new image files
and data sets (checked against an independent computation of entropy, mutual information and disagreement), bad
files, the soup, the self-contained export with its ONNX graph (resnet_mini, torchvision's resnet18 and timm's
test_vit, each checked with onnxruntime here), and the model card."""
import csv
import json
import os
import shutil

import numpy as np
import onnxruntime
import pytest
import torch
import yaml
from conftest import run_script
from PIL import Image
from scipy.stats import entropy

from lib.data import tasks
from lib.data.tasks import load_task
from lib.ensemble.card import model_card
from lib.ensemble.load import input_spec, load_ensemble
from lib.evaluation import metrics, registry
from lib.evaluation.evaluate import run_settings
from lib.infra.errors import UserError
from lib.infra.files import load_json
from lib.runs.rundir import open_run


@pytest.fixture(scope="module")
def run(cache_dir, tmp_path_factory):
    """A finished StarSSE run of 3 resnet_mini members on the embedded digits, with a validation split."""
    out = tmp_path_factory.mktemp("use") / "starsse"
    r = run_script("starsse.py", "--cpu", "--quiet", "--epochs", "2", "--cycle_epochs", "1", "--members", "3",
                   "--val_split", "0.25", "--labels_per_class", "8", "--cache_dir", cache_dir, "--output_dir", out)
    assert r.returncode == 0, r.stderr
    return str(out)


def member_outputs(ens, dataset, batch_size):
    """(mean, members) of the module on a data set, batch by batch in dataset order."""
    means, members = [], []
    with torch.inference_mode():
        for x, _y in tasks.test_loader(dataset, batch_size):
            mean, each = ens(x, members=True)
            means.append(mean)
            members.append(each)
    return torch.cat(means).numpy(), torch.cat(members, dim=1).numpy()


def test_load_ensemble_reproduces_the_runs_metrics(run):
    """Three lines give a module whose members reproduce the saved test predictions bit for bit, so metrics.json's
    ensemble accuracy and NLL exactly; its own output is their mean."""
    ens = load_ensemble(run)
    assert isinstance(ens, torch.nn.Module) and not ens.training and len(ens.members) == 3
    assert ens.class_names == [str(c) for c in range(10)] and load_json(os.path.join(run, "classes.json")) == \
        ens.class_names  # written when the run finished
    cfg = run_settings(open_run(run))
    task = load_task(cfg)
    mean, members = member_outputs(ens, task.test, cfg.eval_batch_size)
    m = load_json(os.path.join(run, "metrics.json"))
    assert np.array_equal(members, open_run(run).load_probs())
    assert metrics.ensemble_accuracy(members, task.test_labels) == m["ensemble_accuracy"]
    assert metrics.nll(members, task.test_labels) == m["nll"]
    assert metrics.accuracy(mean, task.test_labels) == m["ensemble_accuracy"]
    assert metrics.nll(mean, task.test_labels) == pytest.approx(m["nll"], rel=1e-7)  # a float32 mean
    np.testing.assert_allclose(mean, members.mean(axis=0), atol=1e-7)

    # ens.transform: an 8-bit image file of a test digit -> (u8 / 255 - mean) / std, computed here by hand
    u8 = (task.test.images[0] * 255).round().to(torch.uint8)
    image = Image.fromarray(u8.permute(1, 2, 0).numpy())
    spec = input_spec(cfg)
    expected = (u8.float() / 255 - torch.tensor(spec["mean"])[:, None, None]) / torch.tensor(spec["std"])[:, None, None]
    torch.testing.assert_close(ens.transform(image), expected, atol=1e-6, rtol=0)


@pytest.fixture
def digit_files(run, tmp_path):
    """The first 4 test digits as PNG files in a folder tree, and the test labels."""
    task = load_task(run_settings(open_run(run)))
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    paths = []
    for i in range(4):
        u8 = (task.test.images[i] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        path = root / ("sub" if i % 2 else "") / f"digit{i}.png"
        Image.fromarray(u8).save(path)
        paths.append(str(path))
    (root / "notes.txt").write_text("not an image")  # a folder is searched for image files only
    return root, sorted(paths), task.test_labels[:4]


def expected_rows(ens, paths):
    """The prediction file's numbers, computed here: scipy's entropy of the mean, its definition of mutual
    information, the members' votes."""
    with torch.inference_mode():
        x = torch.stack([ens.transform(Image.open(p)) for p in paths])
        p = np.stack([m(x).softmax(-1).double().numpy() for m in ens.members])
    mean = p.mean(0)
    h = entropy(mean, axis=1)
    mi = h - np.mean([entropy(pm, axis=1) for pm in p], axis=0)
    votes = p.argmax(-1)
    return mean, h, mi, (votes != mean.argmax(1)).mean(0), votes


def test_predict_on_image_files_csv_and_jsonl(run, digit_files, script_here, tmp_path):
    root, paths, labels = digit_files
    out = tmp_path / "preds.csv"
    r = script_here("predict.py", run, "--images", root, "--out", out, "--top_k", "3", "--batch_size", "3")
    assert r.returncode == 0, r.stderr
    assert "4 predictions of StarSSE (3 members)" in r.stdout
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == ["image", "prediction", "probability", "top2", "top2_probability", "top3",
                             "top3_probability", "entropy", "mutual_information", "disagreement", "member_1",
                             "member_2", "member_3"]
    assert [r["image"] for r in rows] == paths  # every image below the folder, sorted; notes.txt left out
    ens = load_ensemble(run)
    mean, h, mi, disagreement, votes = expected_rows(ens, paths)
    for j, row in enumerate(rows):
        order = np.argsort(-mean[j])
        assert row["prediction"] == str(order[0]) and row["top2"] == str(order[1]) and row["top3"] == str(order[2])
        assert float(row["probability"]) == pytest.approx(mean[j, order[0]], abs=1e-6)
        assert float(row["top3_probability"]) == pytest.approx(mean[j, order[2]], abs=1e-6)
        assert float(row["entropy"]) == pytest.approx(h[j], abs=1e-6)
        assert float(row["mutual_information"]) == pytest.approx(mi[j], abs=1e-6)
        assert float(row["disagreement"]) == pytest.approx(disagreement[j])
        assert [row[f"member_{i}"] for i in (1, 2, 3)] == [str(v) for v in votes[:, j]]
    # the same as JSON Lines, one image (a file, not a folder) named as given
    r = script_here("predict.py", run, "--images", paths[1], "--out", tmp_path / "one.jsonl")
    assert r.returncode == 0, r.stderr
    [line] = [json.loads(s) for s in open(tmp_path / "one.jsonl")]
    assert line["image"] == paths[1] and line["prediction"] == rows[1]["prediction"]
    assert line["entropy"] == pytest.approx(h[1], abs=1e-6) and "top2" not in line


def test_a_file_that_is_no_image_stops_before_anything_is_written_unless_skip_bad(run, digit_files, script_here,
                                                                                   tmp_path):
    root, paths, _labels = digit_files
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "preds.csv"
    r = script_here("predict.py", run, "--images", root, bad, "--out", out)
    assert r.returncode == 2 and not out.exists()
    [line] = r.stderr.strip().splitlines()
    assert str(bad) in line and "--skip_bad" in line
    r = script_here("predict.py", run, "--images", root, bad, root / "notes.txt", "--skip_bad", "--out", out)
    assert r.returncode == 0, r.stderr
    assert [row.split(",")[0] for row in open(out).read().splitlines()[1:]] == paths
    os.remove(out)
    assert "skipped 2 file(s) that are not readable images" in r.stdout
    assert str(bad) in r.stdout and str(root / "notes.txt") in r.stdout
    for args, message in ((["--images", root, "--out", tmp_path / "p.txt"], "must end in .csv or .jsonl"),
                          (["--images", tmp_path / "missing"], "no such file or folder"),
                          (["--data", "nonsense"], "unknown evaluation set"),
                          (["--images", root, "--top_k", "11"], "--top_k 11: the ensemble has 10 classes")):
        r = script_here("predict.py", run, *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    r = script_here("predict.py", tmp_path, "--images", root)
    assert r.returncode == 2 and "not a run directory" in r.stderr
    copy = tmp_path / "run"  # a member's weights altered after training: refused by its record's digest
    shutil.copytree(run, copy)
    with open(copy / "member_2.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\1\2\3\4")
    r = script_here("predict.py", copy, "--images", root, "--out", out)
    assert r.returncode == 2 and "member_2.safetensors is damaged" in r.stderr and not out.exists()


def test_predict_on_the_runs_test_set_and_an_eval_set(run, script_here, tmp_path):
    """--data test: the saved test predictions' mean, with the labels; an evaluation set by its spec."""
    out = tmp_path / "test.csv"
    r = script_here("predict.py", run, "--data", "test", "--limit", "25", "--out", out)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out)))
    saved = open_run(run).load_probs().mean(axis=0)[:25]
    labels = np.load(os.path.join(run, "labels.npy"))[:25]
    np.testing.assert_allclose([float(r["probability"]) for r in rows], saved.max(axis=1), atol=1e-6)
    assert [r["label"] for r in rows] == [str(y) for y in labels]
    assert f"accuracy on these 25 labelled images: {metrics.ensemble_accuracy(saved, labels):.2f} %" in r.stdout
    r = script_here("predict.py", run, "--data", "flipped", "--limit", "5", "--out", tmp_path / "flipped.csv")
    assert r.returncode == 0, r.stderr
    assert [row.split(",")[0] for row in open(tmp_path / "flipped.csv").read().splitlines()[1:]] == list("01234")


def test_predict_with_the_soup_reproduces_soup_py(run, script_here, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    r = script_here("predict.py", copy, "--data", "test", "--soup", "greedy", "--out", tmp_path / "g.csv")
    assert r.returncode == 2 and "no greedy soup yet" in r.stderr
    r = script_here("soup.py", copy, "--mode", "uniform", "greedy", "--cpu")
    assert r.returncode == 0, r.stderr
    m = load_json(copy / "metrics.json")
    assert f"{m['soup/uniform/acc']:.2f}" in open(copy / "README.md").read()  # the card now shows the soup
    for mode in ("uniform", "greedy"):
        out = tmp_path / f"{mode}.csv"
        r = script_here("predict.py", copy, "--data", "test", "--soup", mode, "--out", out)
        assert r.returncode == 0, r.stderr
        assert f"accuracy on these 540 labelled images: {m[f'soup/{mode}/acc']:.2f} %" in r.stdout
        header, first = open(out).read().splitlines()[:2]
        assert header == "image,prediction,probability,entropy,mutual_information,disagreement,label"
        assert first.split(",")[4:6] == ["", ""]  # one network: no mutual information, no disagreement
    assert load_ensemble(str(copy), soup="greedy").info["soup_members"] == m["soup/greedy/members"]


def test_export_is_self_contained_with_an_onnx_graph(run, script_here, tmp_path):
    copy, out = tmp_path / "run", tmp_path / "export"
    shutil.copytree(run, copy)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    r = script_here("export.py", copy, "--out", tmp_path / "busy")
    assert r.returncode == 2 and "holds no export" in r.stderr and os.listdir(tmp_path / "busy") == ["keep.txt"]
    r = script_here("export.py", copy, "--out", out, "--onnx")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.onnx", "model.safetensors"]
    from_run = load_ensemble(str(copy))
    task = load_task(run_settings(open_run(str(copy))))
    shutil.rmtree(copy)  # the export needs nothing of the run
    ens = load_ensemble(str(out))
    config = load_json(out / "config.json")
    assert config["arch"] == "resnet_mini" and config["class_names"] == [str(c) for c in range(10)]
    assert config["info"]["method"] == "StarSSE" and config["info"]["metrics"]["ensemble_accuracy"] == \
        load_json(os.path.join(run, "metrics.json"))["ensemble_accuracy"]
    x = torch.stack([task.test[i][0] for i in range(50)])  # real test digits in the run's test transform
    with torch.inference_mode():
        mean, members = ens(x, members=True)
        assert torch.equal(mean, from_run(x)) and members.shape == (3, 50, 10)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    probs, member_probs = session.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(probs, mean.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(member_probs, members.numpy(), atol=1e-4, rtol=0)
    # predictions from the export equal those from the run; a damaged weights file is one line
    r = script_here("predict.py", out, "--data", "test", "--limit", "10", "--out", tmp_path / "e.csv")
    assert r.returncode == 0, r.stderr
    with open(out / "model.safetensors", "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\0" * 8)
    with pytest.raises(UserError, match="model.safetensors is damaged"):
        load_ensemble(str(out))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "timm/test_vit"])
def test_onnx_export_of_a_torchvision_and_a_timm_ensemble(arch, script_here, tmp_path, monkeypatch):
    """A 2-member StarSSE of each family at 32 px, exported with --onnx: onnxruntime gives PyTorch's probabilities
    to 1e-4 on 40 test digits (a batch size the graph was not traced with)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = script_here("starsse.py", "--arch", arch, "--image_size", "32", "--pretrained", "scratch", "--cpu", "--quiet",
                    "--epochs", "1", "--cycle_epochs", "1", "--members", "2", "--labels_per_class", "2",
                    "--cache_dir", tmp_path / "cache", "--output_dir", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    r = script_here("export.py", tmp_path / "run", "--out", tmp_path / "export", "--onnx")
    assert r.returncode == 0, r.stderr
    ens = load_ensemble(str(tmp_path / "export"))
    task = load_task(run_settings(open_run(str(tmp_path / "run"))))
    x = torch.stack([task.test[i][0] for i in range(40)])
    assert x.shape == (40, 3, 32, 32)
    with torch.inference_mode():
        mean, members = ens(x, members=True)
    session = onnxruntime.InferenceSession(str(tmp_path / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    probs, member_probs = session.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(probs, mean.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(member_probs, members.numpy(), atol=1e-4, rtol=0)
    assert np.abs(mean.numpy() - 0.1).max() > 1e-3  # trained: not a uniform output that any graph would match


def test_model_card_of_a_finished_run(run):
    text = open(os.path.join(run, "README.md")).read()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    m = load_json(os.path.join(run, "metrics.json"))
    [result] = meta["model-index"][0]["results"]
    values = {r["type"]: r["value"] for r in result["metrics"]}
    assert values["ensemble_accuracy"] == pytest.approx(m["ensemble_accuracy"], abs=1e-6)
    assert values["nll"] == pytest.approx(m["nll"], abs=1e-6) and result["dataset"]["type"] == "digits"
    for section in ("## Method and settings", "## Data", "## Metrics (test set)", "## How to use", "## Limitations"):
        assert section in text
    ens = registry.get("ensemble_accuracy")  # the card names and defines a metric as the registry does
    assert f"| {ens.label} | {m['ensemble_accuracy']:.2f} | % | {ens.definition}" in text
    assert f'load_ensemble("{os.path.normpath(run)}")' in text and "10.19 %" in text


def test_model_card_warns_against_the_soup_of_members_from_different_checkpoints(run):
    """A Global DE run's card names its measured soup next to the ensemble."""
    cfg = run_settings(open_run(run))
    info = {"arch": "resnet_mini", "method": "Global DE", "members": 4, "soup": None,
            "settings": dict(cfg.as_dict(), pretrained=["a.safetensors", "b.safetensors"]),
            "metrics": {"ensemble_accuracy": 92.31, "soup/uniform/acc": 10.19, "nll": 0.38}}
    text = model_card(info, [str(c) for c in range(10)], input_spec(cfg), "runs/global_de")
    assert "members come from 2 different checkpoints: do not use its soup (measured: uniform soup 10.19 % against " \
           "the ensemble's 92.31 %)" in text
    assert f"| {registry.header('soup/uniform/acc')} | 10.19 | % |" in text and "tags:\n- image-classification" in text


def test_the_docs_show_the_prediction_columns_as_the_code_defines_them():
    from lib.ensemble.predict import COLUMNS
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                           "using-ensembles.md")) as f:
        docs = f.read()
    for column, meaning in COLUMNS.items():
        assert f"| {column} | {meaning} |" in docs, column
