"""Faults outside the training loop (each found by a probe of bad inputs): one clear line and a non-zero exit, or a
correct result, and nothing good overwritten or lost. Truncated JPEGs, a one-class task, a bad CIFAR-C labels file,
a full disk under numpy, a changed process count, stop signals while starting or finishing, a model that cannot take
the input size, and damaged cache entries of every kind."""
import os
import shutil
import signal

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import mounted_tmpfs, needs_root, settings, signalled_at_start  # noqa: E402
from PIL import Image  # noqa: E402

from lib.infra.errors import UserError  # noqa: E402

IMAGEFOLDER = ["--dataset", "imagefolder", "--arch", "resnet_mini", "--image_size", "16", "--pretrained", "scratch",
               "--cpu", "--quiet", "--epochs", "1", "--members", "1", "--batch_size", "4"]


def _one_line(r, *parts):
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for p in parts:
        assert p in r.stderr, r.stderr


def _jpeg_folder(root, classes=("a", "b"), per_class=3):
    rng = np.random.RandomState(0)
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for k in range(per_class):
            Image.fromarray(rng.randint(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / c / f"{k}.jpg", quality=90)


def test_a_truncated_jpeg_is_found_before_the_run_folder_is_written(tmp_path, script_here):
    _jpeg_folder(tmp_path / "train")
    _jpeg_folder(tmp_path / "test")
    bad = tmp_path / "train" / "b" / "1.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[:int(len(data) * 0.8)])  # PIL's verify() passes this; decoding it fails
    Image.open(bad).verify()
    r = script_here("finetune.py", *IMAGEFOLDER, "--train_dir", tmp_path / "train", "--test_dir", tmp_path / "test",
                    "--data_pipeline", "torchvision", "--cache_dir", tmp_path / "c", "--output_dir", tmp_path / "run")
    _one_line(r, f"image {bad} cannot be decoded")
    assert r.returncode == 2 and not (tmp_path / "run").exists()


def test_a_task_of_one_class_is_refused(tmp_path, script_here):
    _jpeg_folder(tmp_path / "train", classes=("only",))
    _jpeg_folder(tmp_path / "test", classes=("only",))
    r = script_here("finetune.py", *IMAGEFOLDER, "--train_dir", tmp_path / "train", "--test_dir", tmp_path / "test",
                    "--cache_dir", tmp_path / "c", "--output_dir", tmp_path / "run")
    _one_line(r, "the task has 1 class (only): a classifier needs at least two")
    assert r.returncode == 2 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("labels, message", [
    (b"not an array", "labels.npy is not a readable .npy array"),
    (np.array([0.5] * 10), "labels.npy holds float64 (10,), not one integer label per image"),
    (np.array([[0, 1]] * 5), "not one integer label per image"),
    (np.array([object()] * 10, dtype=object), "labels.npy is not a readable .npy array"),
])
def test_a_bad_cifar_c_labels_file_is_one_line(tmp_path, tiny, labels, message):
    from lib.data import tasks
    root = tmp_path / "cc"
    root.mkdir()
    np.save(root / "fog.npy", np.zeros((10, 8, 8, 3), np.uint8))
    if isinstance(labels, bytes):
        (root / "labels.npy").write_bytes(labels)
    else:
        np.save(root / "labels.npy", labels, allow_pickle=True)
    cfg = settings(tiny)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tasks.load_eval_set(f"cifar-c:{root}", cfg, True, tasks.load_task(cfg))


@needs_root("mounts a small tmpfs to fill")
def test_a_full_disk_under_numpy_is_said_so(tmp_path):
    from lib.infra.errors import os_error_line
    from lib.infra.files import save_array, save_json
    full = tmp_path / "full"
    with mounted_tmpfs(full, "size=64k"):
        save_json(full / "good.json", {"a": 1})
        with pytest.raises(OSError) as e:
            save_array(str(full / "a.npy"), np.zeros(100_000, np.float32))
        assert os_error_line(e.value) == (f"the disk is full (writing {full / 'a.npy'}); free some space and re-run "
                                          f"the same command to resume")
        assert sorted(os.listdir(full)) == ["good.json"]  # nothing half-written, the good file kept
        del e


def test_members_trained_under_another_process_count_are_never_mixed(tmp_path, tiny):
    """config.json records how many processes train each member together; resuming under another count is refused
    like any other changed setting (member-parallel runs record 1: their results equal a one-process run's)."""
    import json

    from lib.runs.rundir import RunDir, config_diff
    from lib.training.experiment import Experiment
    out = tmp_path / "run"
    exp = Experiment(settings(tiny + ["--members", "2", "--output_dir", out], "Local DE"))
    exp.finetune(1)
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["processes"] == 1 and "processes" not in (out / "config.yaml").read_text()
    with pytest.raises(UserError, match=r"holds a different run \(processes: 1 -> 2\)"):
        RunDir.check(str(out), dict(exp.record, processes=2))
    old = {k: v for k, v in recorded.items() if k != "processes"}  # a run recorded before the count was
    assert config_diff(old, recorded) == []


def test_a_stop_signal_while_starting_is_one_line_and_exit_75(tmp_path, cache_dir):
    r = signalled_at_start("starsse.py", signal.SIGTERM, "--cpu", "--cache_dir", cache_dir, "--output_dir",
                           tmp_path / "o")
    assert r.returncode == 75 and r.stderr.strip() == ("stopped by SIGTERM while starting: nothing was written; "
                                                       "re-run the same command"), r.stderr
    assert not (tmp_path / "o").exists()


def test_a_stop_signal_before_the_evaluation_ends_in_a_resumable_exit(tmp_path, tiny, script_here, monkeypatch):
    """Every member saved, the signal arrives before finish(): exit 75 without metrics.json; the re-run only
    evaluates. A signal after the work is done is said, and the exit is 0."""
    from lib.infra import preemption
    out = tmp_path / "run"
    flags = [*tiny, "--members", "2", "--output_dir", out]
    from lib.training import experiment
    real_finish = experiment.Experiment.finish

    def finish_after_a_signal(self):
        preemption._requested.append(signal.SIGTERM)
        return real_finish(self)
    monkeypatch.setattr(experiment.Experiment, "finish", finish_after_a_signal)
    r = script_here("starsse.py", *flags)
    assert r.returncode == 75 and "stopped before the evaluation (SIGTERM); every member is saved" in r.stderr
    assert (out / "member_2.json").exists() and not (out / "metrics.json").exists()
    preemption._requested.clear()
    monkeypatch.undo()
    r = script_here("starsse.py", *flags)
    assert r.returncode == 0 and (out / "metrics.json").exists() and "member 2 (cycle)" not in r.stderr
    preemption._requested.append(signal.SIGTERM)  # arrives during a read-only evaluation
    try:
        r = script_here("evaluate.py", out)
    finally:
        preemption._requested.clear()
    assert r.returncode == 0 and "note: SIGTERM arrived as the work ended; it is complete" in r.stderr


def test_a_model_that_cannot_take_the_input_size_names_the_smallest_that_works(tmp_path, script_here):
    r = script_here("starsse.py", "--arch", "timm/test_convnext", "--list_stages")
    _one_line(r, "--arch timm/test_convnext cannot take 16 px inputs", "the smallest --image_size that works is 32")
    r = script_here("starsse.py", "--arch", "timm/test_convnext", "--pretrained", "scratch", "--cpu",
                    "--output_dir", tmp_path / "run")
    _one_line(r, "the smallest --image_size that works is 32")
    assert not (tmp_path / "run").exists()
    r = script_here("starsse.py", "--arch", "timm/test_convnext", "--list_stages", "--image_size", "32")
    assert r.returncode == 0 and "timm/test_convnext at 32 px" in r.stdout


def _flip(path, at=None):
    data = bytearray(open(path, "rb").read())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_a_damaged_phase1_cache_entry_is_trained_again_not_used(tmp_path, tiny, fresh_cache, script_here):
    cache = fresh_cache()
    flags = [*tiny[:-2], "--cache_dir", cache, "--members", "1"]
    r = script_here("finetune.py", *flags, "--output_dir", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    entry = os.path.join(cache, "finetune", next(d for d in os.listdir(os.path.join(cache, "finetune"))
                                                 if not d.endswith(".lock")))
    _flip(os.path.join(entry, "member_1.safetensors"))
    r = script_here("finetune.py", *flags, "--output_dir", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert "note: the cached phase I of member 1 is damaged" in r.stdout and "training it again" in r.stdout
    for name in ("member_1.safetensors", "member_1_probs.npy"):  # trained again, identically
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_damaged_decode_and_scan_cache_entries_are_made_again(tmp_path):
    from lib.data import sources
    from lib.infra.files import intact
    _jpeg_folder(tmp_path / "imgs")
    src = sources.folder_images(str(tmp_path / "imgs"), ["a", "b"], "t")
    cache = str(tmp_path / "cache")
    first, scan = sources.decode(src, (16, 16), cache), sources.scan(src, cache)
    decoded = sources._cache_path(cache, src, "16x16.npy")
    scanned = sources._cache_path(cache, src, "scan.npy")
    assert intact(decoded) and intact(scanned)
    for path in (decoded, scanned):
        _flip(path, at=os.path.getsize(path) - 3)  # a pixel / a size, inside the array data
        assert not intact(path)
    assert np.array_equal(sources.decode(src, (16, 16), cache), first) and intact(decoded)
    again = sources.scan(src, cache)
    assert np.array_equal(again.sizes, scan.sizes) and again.converted == scan.converted and intact(scanned)


def test_a_damaged_embedded_checkpoint_is_made_again(tmp_path, fresh_cache, monkeypatch, capsys):
    from lib.infra.files import intact
    from lib.training import experiment, pretrain
    cache = fresh_cache()
    path = pretrain.default_checkpoint(cache, 0)
    good = open(path, "rb").read()
    assert intact(path)
    _flip(path)
    calls = []

    def fake_pretrain(out, **kw):  # the real one takes a minute: put the good bytes back, sealed
        calls.append(out)
        open(out, "wb").write(good)
        pretrain.seal(out)
    monkeypatch.setattr(experiment, "pretrain_digits", fake_pretrain)
    experiment.Experiment(settings(["--cpu", "--quiet", "--cache_dir", cache, "--output_dir", tmp_path / "r"]))
    assert calls == [path] and "is damaged (its content does not match its digest)" in capsys.readouterr().out


def test_a_damaged_representation_cache_entry_is_computed_again(tmp_path):
    from lib.infra.files import intact, save_json, seal
    path = str(tmp_path / "repr.json")
    save_json(path, {"key": 1, "rtd": [0.5]})
    seal(path)
    assert intact(path)
    text = open(path).read().replace("0.5", "0.7")
    open(path, "w").write(text)
    assert not intact(path) and not intact(str(tmp_path / "missing.json"))
    shutil.copy(path, tmp_path / "unsealed.json")
    assert intact(str(tmp_path / "unsealed.json"), unsealed=True) and not intact(str(tmp_path / "unsealed.json"))
