"""The opt-in parallel training path (ctxstyle.experiments.parallel, recipe.train_in_parallel, segmentation.train_all
with workers): the same runs as the plain path, bit for bit at the same thread count on one machine."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxstyle.errors import InputError
from ctxstyle.experiments.presets import FAST, run_dir
from ctxstyle.experiments.parallel import TrainingPool, call_recording_warnings, show_warnings, spawn_pool
from ctxstyle.experiments.recipe import Recipe, train_in_parallel
from ctxstyle.experiments.segmentation import SegConfig, TrainingSet, train_all
from ctxstyle.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _structured(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(n, 1, size, size, generator=g), 3, 1, 1)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """A folder of .npy content images and one of style images (the data a worker loads by spec)."""
    root = tmp_path_factory.mktemp("data")
    np.save(root / "content.npy", _structured(6, 32, 0).numpy())
    np.save(root / "style.npy", (0.5 * _structured(6, 32, 1) ** 2).numpy())
    return root


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _same_run(a, b):
    sa, sb = _state(a), _state(b)
    assert [h["total"] for h in sa["history"]] == [h["total"] for h in sb["history"]]
    for k in sa["decoder"]:
        assert torch.equal(sa["decoder"][k], sb["decoder"][k]), k


def test_a_pooled_run_is_the_plain_run_at_the_same_thread_count(tmp_path, image_files):
    cfg = TrainConfig(method="ours", adain_layer="relu2_1", content_layers=("relu2_1",), image_size=32,
                      batch_size=2, iterations=3, lr_schedule="cosine", device="cpu",
                      content_data=str(image_files / "content.npy"), style_data=str(image_files / "style.npy"))
    with TrainingPool(workers=2, threads=1) as pool:
        future = pool.train(cfg, tmp_path / "pool", "ours")
        assert pool.train(cfg, tmp_path / "pool", "ours") is future  # one run per checkpoint folder
        pooled = Path(future.result())
    assert pooled.parent == run_dir(cfg, tmp_path / "pool", "ours")
    assert json.loads((pooled.parent / "config.json").read_text())["threads"] == 1  # recorded, not hashed
    plain_cfg = TrainConfig.from_dict({**cfg.to_dict(), "output_dir": str(tmp_path / "plain"), "threads": 1})
    _same_run(pooled, train(plain_cfg, progress=False, fast=FAST))  # the pool trains as the experiments do


@pytest.fixture()
def colour_pictures(tmp_path):
    """A folder of colour PNGs: reading them warns (converted to gray) inside the worker that trains."""
    from PIL import Image

    folder = tmp_path / "colour"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "RGB").save(folder / f"c{i}.png")
    return TrainConfig(method="reconstruction", adain_layer="relu2_1", image_size=32, batch_size=2, iterations=1,
                       device="cpu", content_data=str(folder))


def test_a_warning_raised_in_a_pooled_run_reaches_this_process(tmp_path, colour_pictures):
    """A worker's stderr is not the notebook's: what a run warns there is warned here when it ends."""
    with TrainingPool(workers=1) as pool:
        with pytest.warns(UserWarning, match=r"c\d\.png: colour picture converted to gray"):
            Path(pool.train(colour_pictures, tmp_path / "runs", "warm").result(timeout=300))


def test_a_worker_warning_that_this_process_makes_an_error_is_the_runs_error(tmp_path, colour_pictures):
    """Under an "error" filter the relayed warning is raised where the run is awaited (never a hang)."""
    with TrainingPool(workers=1) as pool:
        future = pool.train(colour_pictures, tmp_path / "runs", "warm")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(UserWarning, match="colour picture converted to gray"):
                future.result(timeout=300)


def test_show_warnings_keeps_the_category_or_falls_back_to_userwarning():
    with spawn_pool(1) as pool:
        result, caught = pool.submit(call_recording_warnings, warnings.warn, "a worker's warning", RuntimeWarning).result()
    assert result is None and caught == [("builtins", "RuntimeWarning", "a worker's warning")]
    with pytest.warns(RuntimeWarning, match="a worker's warning"):
        show_warnings(caught)
    with pytest.warns(UserWarning, match="from an unknown class"):
        show_warnings([("not_imported_here", "OddWarning", "from an unknown class")])


def test_a_failing_run_raises_from_its_future(tmp_path):
    bad = TrainConfig(method="reconstruction", adain_layer="relu2_1", image_size=32, batch_size=2, iterations=2,
                      device="cpu", content_data=str(tmp_path / "missing.npy"))
    with TrainingPool(workers=1) as pool:
        with pytest.raises(InputError, match="missing.npy"):
            pool.train(bad, tmp_path, "warm").result()
    with pytest.raises(InputError, match="workers"):
        TrainingPool(workers=0)


def test_train_in_parallel_fills_the_cache_the_plain_recipe_reads(tmp_path, image_files, monkeypatch):
    """Warm start, then the lr candidates and the chosen lr at every seed: the plain path afterwards
    trains nothing (every checkpoint it asks for exists) and chooses the same lr."""
    from ctxstyle import image_sources
    from ctxstyle.experiments import recipe as rc

    r = Recipe(encoder="vgg19", adain_layer="relu2_1", image_size=32, crop_size=32, batch_size=2, warm_iterations=3,
               iterations=2, lrs=(1e-3, 3e-4), seeds=(0, 1), style_layers=("relu1_1", "relu2_1"),
               cx_style_layers=("relu2_1",))
    data = {"content_data": str(image_files / "content.npy"), "style_data": str(image_files / "style.npy")}
    for name in ("warm_start_config", "method_config"):  # the runs read the test images, not the protocol's
        monkeypatch.setattr(rc, name, lambda *a, _orig=getattr(rc, name), **k: replace(_orig(*a, **k), **data))
    monkeypatch.setattr(rc, "val_pairs", lambda recipe, seed=0: "val")
    scores = {}

    def fake_score(st, pairs, cache):  # a deterministic stand-in for the validation LPIPS of one run
        scores[st.config["lr"]] = float(st.config["lr"] == 3e-4)
        return scores[st.config["lr"]]
    monkeypatch.setattr(rc, "val_score", fake_score)
    out = train_in_parallel([(r, ["ours"])], tmp_path, workers=2, progress=False)
    assert out["runs"] == 1 + 2 + 1  # warm start, two lr candidates at seed 0, the chosen lr at seed 1
    init = str(run_dir(rc.warm_start_config(r), tmp_path, "warm-vgg19-relu2_1") / "checkpoint-last.pt")
    for lr, seed in [(1e-3, 0), (3e-4, 0), (1e-3, 1)]:
        assert (run_dir(rc.method_config("ours", r, lr=lr, seed=seed, init_decoder=init), tmp_path, "ours")
                / "checkpoint-last.pt").is_file()
    assert not any((d / "checkpoint-last.pt").is_file() for d in tmp_path.glob("ours-*")
                   if json.loads((d / "config.json").read_text())["lr"] == 3e-4 and
                   json.loads((d / "config.json").read_text())["seed"] == 1)

    def no_training(*a, **k):
        raise AssertionError("the plain path trained a run the parallel path should have left in the cache")
    monkeypatch.setattr(image_sources, "load_images", no_training)
    decoders = rc.trained_decoders("ours", r, tmp_path, progress=False)
    assert sorted(decoders) == [0, 1] and {st.config["lr"] for st in decoders.values()} == {1e-3}


def test_train_in_parallel_counts_a_diverged_lr_candidate_as_choose_lr_does(tmp_path, image_files, monkeypatch):
    """A candidate whose run blows up in a worker (TrainingDiverged crosses the process) scores NaN
    with a warning and the other lr is chosen; when every candidate diverges, the same InputError as
    choose_lr, before any seed is queued."""
    from ctxstyle.experiments import recipe as rc

    r = Recipe(encoder="vgg19", adain_layer="relu2_1", image_size=32, crop_size=32, batch_size=2, warm_iterations=2,
               iterations=4, lrs=(1e30, 1e-3), seeds=(0, 1), style_layers=("relu1_1", "relu2_1"),
               cx_style_layers=("relu2_1",))
    data = {"content_data": str(image_files / "content.npy"), "style_data": str(image_files / "style.npy")}
    for name in ("warm_start_config", "method_config"):  # the runs read the test images, not the protocol's
        monkeypatch.setattr(rc, name, lambda *a, _orig=getattr(rc, name), **k: replace(_orig(*a, **k), **data))
    monkeypatch.setattr(rc, "val_pairs", lambda recipe, seed=0: "val")
    monkeypatch.setattr(rc, "val_score", lambda st, pairs, cache: 0.5)  # a stand-in for the validation LPIPS
    with pytest.warns(UserWarning, match="diverged.*counted as a failed lr candidate"):
        out = train_in_parallel([(r, ["adain"])], tmp_path, workers=2, progress=False)
    assert out["runs"] == 1 + 2 + 1  # warm start, both candidates at seed 0, the finite one at seed 1
    assert {json.loads((d / "config.json").read_text())["lr"] for d in tmp_path.glob("adain-*")
            if (d / "checkpoint-last.pt").is_file() and not (d / "diverged.json").exists()} == {1e-3}
    with pytest.warns(UserWarning), pytest.raises(InputError, match="lrs: training adain diverged at every candidate"):
        train_in_parallel([(replace(r, lrs=(1e30,)), ["adain"])], tmp_path, workers=2, progress=False)
    assert not any(json.loads((d / "config.json").read_text())["seed"] == 1 and
                   json.loads((d / "config.json").read_text())["lr"] == 1e30 for d in tmp_path.glob("adain-*"))


def test_unets_trained_side_by_side_equal_the_plain_ones(tmp_path, square_masks):
    images, masks = square_masks(8)
    sets = {"a": TrainingSet("a", images, masks), "b": TrainingSet("b", 1 - images, masks)}
    cfg = SegConfig(image_size=16, base_channels=4, depth=2, steps=4, batch_size=4, lr=0.01)
    pooled = train_all(cfg, sets, [0, 1], checkpoints_dir=tmp_path / "pool", progress=False, workers=2)
    plain = train_all(cfg, sets, [0, 1], checkpoints_dir=tmp_path / "plain", progress=False)
    assert set(pooled) == set(plain) == {("a", 0), ("a", 1), ("b", 0), ("b", 1)}
    for key in pooled:
        assert pooled[key].cached and not plain[key].cached
        for p, q in zip(pooled[key].net.parameters(), plain[key].net.parameters()):
            assert torch.equal(p, q), key
    with pytest.raises(InputError, match="checkpoints_dir"):
        train_all(cfg, sets, [0], workers=2)


def test_a_unet_checkpoint_records_the_thread_count_that_trained_it(tmp_path, square_masks):
    """run_key leaves threads out (another count: the same run, other rounding), so the checkpoint says."""
    from ctxstyle.experiments.segmentation import train_unet

    images, masks = square_masks(8)
    cfg = SegConfig(image_size=16, base_channels=4, depth=2, steps=2, batch_size=4, lr=0.01, threads=2)
    run = train_unet(cfg, TrainingSet("a", images, masks), checkpoints_dir=tmp_path, progress=False)
    assert _state(run.path)["torch_threads"] == 2
