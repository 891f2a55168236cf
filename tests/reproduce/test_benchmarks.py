"""reproduce.benchmarks: the fast inference path equals the reference AdaIN loop, and ``--quick``
runs every part end to end into a temporary folder."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ctxstyle.fast import inference as M  # noqa: E402
from ctxstyle.fast import nnpack  # noqa: E402
from ctxstyle.stylize import Stylizer  # noqa: E402
from reproduce.benchmarks import stylization  # noqa: E402
from reproduce.benchmarks.reference_adain import ReferenceAdaIN  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net():
    from ctxstyle.fast.inference import accelerate

    return accelerate(stylization.build_bench_net())


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("path", ["direct", "torch-op", "module"])
def test_fast_path_equals_reference_loop(net, size, path):
    gen = torch.Generator().manual_seed(size)
    contents = torch.rand(3, 1, size, size, generator=gen)
    style = torch.rand(1, 1, size, size, generator=gen)
    stylization.spread_outputs(net, contents[:2], style)
    reference = ReferenceAdaIN(net)(contents, style, alpha=0.8)
    assert 0.05 < float(((reference > 0) & (reference < 1)).float().mean())  # not all clamped
    fast_net = stylization.copy.deepcopy(net)
    fast_net.winograd = path != "module"
    fast_net.direct_nnpack = path == "direct"  # else torch._nnpack_spatial_convolution
    stylizer = Stylizer(fast_net)
    feats = stylizer.style_features(style)
    out = stylizer(contents, style_feats=feats, alpha=0.8, batch_size=2)
    assert out.shape == reference.shape
    assert float((out - reference).abs().max()) < 1e-4


def test_shared_encoder_decoding_takes_the_same_path_as_stylize(net):
    """style_transfer's shared-feature decoding equals Stylizer's per-pair pipeline exactly."""
    import numpy as np

    from ctxstyle.experiments.style_transfer import PairSet, method_outputs, stylize_pairs

    gen = torch.Generator().manual_seed(1)
    contents, styles = torch.rand(2, 64, 64, generator=gen).numpy(), torch.rand(2, 64, 64, generator=gen).numpy()
    stylization.spread_outputs(net, torch.from_numpy(contents[:, None]), torch.from_numpy(styles[:1, None]))
    stylizer = Stylizer(net, fast=True)  # the path the experiments take
    idx = np.arange(2)
    pairs = PairSet(split="test", image_size=64, source_style="bone", styles=("s",), content=contents,
                    hu=contents, mask=np.zeros_like(contents, dtype=np.uint8), patient=np.array(["p", "p"]),
                    index=idx, ref_index=idx[::-1], refs={"s": styles}, truth={"s": styles})
    outputs, ms = method_outputs(pairs, {"a": stylizer, "b": stylizer}, include=(), batch_size=2, timing_pairs=0)
    assert ms == {}  # no timing asked
    for name in ("a", "b"):  # one shared encoding, decoded per method
        assert np.array_equal(outputs[name]["s"], stylize_pairs(stylizer, contents, styles))


def test_fast_path_thresholds(net):
    """Direct NNPACK path: from 64x64 images at any thread count. torch's NNPACK operator alone:
    from 64x64 with one thread, from 256x256 with more (measured crossovers)."""
    if not nnpack.torch_available():
        pytest.skip("no NNPACK in this torch build")
    tiny, small, large = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 128, 128), torch.rand(1, 1, 256, 256)
    try:
        for direct in ([True, False] if nnpack.available() else [False]):
            net.direct_nnpack = direct
            torch.set_num_threads(1)
            assert not net.uses_fast_path(tiny) and net.uses_fast_path(small) and net.uses_fast_path(large)
            torch.set_num_threads(2)
            assert net.uses_fast_path(small) == direct and net.uses_fast_path(large)
    finally:
        torch.set_num_threads(1)
        net.direct_nnpack = True


def test_batches_run_on_parallel_workers_with_the_same_result(net, monkeypatch):
    """With 2 threads the images of a batch run on worker threads, one image per thread (NNPACK
    and PyTorch single-threaded, inference mode), and give exactly what one image at a time gives."""
    if not nnpack.available():
        pytest.skip("no usable NNPACK in this torch build")
    gen = torch.Generator().manual_seed(3)
    # 128 px: the decoder's 64->64 layers take NNPACK's FFT path (>= 128x128 outputs) as well
    contents, style = torch.rand(3, 1, 128, 128, generator=gen), torch.rand(1, 1, 128, 128, generator=gen)
    seen = []
    encode_one, decode_one = net._encode_one, net._decode_one

    def spy(fn):
        def wrapped(x):
            seen.append((threading.current_thread().name, torch.get_num_threads(), nnpack._nnpack_threads(),
                         torch.is_inference_mode_enabled(), x.shape[0]))
            return fn(x)
        return wrapped

    torch.set_num_threads(2)
    try:
        net.parallel_images = False
        serial = net.stylize(contents, [net.style_features(style)]), net.style_features(contents)
        monkeypatch.setattr(net, "_encode_one", spy(encode_one))
        monkeypatch.setattr(net, "_decode_one", spy(decode_one))
        net.parallel_images = True
        parallel = net.stylize(contents, [net.style_features(style)]), net.style_features(contents)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
        net.parallel_images = True
    assert torch.equal(parallel[0], serial[0]) and torch.equal(parallel[1], serial[1])
    on_workers = [s for s in seen if s[0].startswith("ctxstyle-image")]
    assert len(on_workers) == 3 + 3 + 3  # contents encoded and decoded, then encoded as styles
    assert all(s[1:] == (1, 1, True, 1) for s in on_workers)
    assert len(seen) == len(on_workers) + 1  # the single style image: on the caller, no worker needed


def test_decode_stylized_matches_stylize_and_takes_empty_batches(net):
    gen = torch.Generator().manual_seed(2)
    content, style = torch.rand(2, 1, 64, 64, generator=gen), torch.rand(1, 1, 64, 64, generator=gen)
    sf = net.style_features(style)
    with torch.inference_mode():
        t = M.adain_blend(net.encoder(content, [net.adain_layer])[net.adain_layer], [sf])
        assert torch.allclose(net.decode_stylized(t), net.stylize(content, [sf]), atol=1e-4)
        assert net.decode_stylized(t[:0]).shape == (0, 1, 64, 64)


def test_inference_helpers_are_exact():
    torch.manual_seed(0)
    with torch.inference_mode():
        x = torch.rand(1, 8, 67, 70)  # odd height: floor mode drops the last row
        pool = nn.MaxPool2d(2, 2)
        assert torch.equal(M.run_modules([pool], x), pool(x))
        for shape in ((1, 3, 5, 7), (2, 4, 2, 3), (1, 2, 256, 257)):
            y = torch.rand(shape)
            up, pad = nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1)
            assert torch.equal(M.run_modules([up, pad], y), pad(up(y)))
            assert torch.equal(M.reflect_pad1(y, upsample=False), pad(y))
            assert torch.equal(M.run_modules([pad], y), pad(y))
        x = torch.randn(1, 16, 20, 22)
        last = nn.Conv2d(16, 1, 3)
        assert torch.allclose(M.run_modules([last], x), last(x), atol=1e-5)
        relu_first = x.clone()
        M.run_modules([nn.ReLU()], relu_first)
        assert torch.equal(relu_first, x)  # a ReLU on the caller's tensor never runs in place
        if nnpack.torch_available():
            conv = nn.Conv2d(32, 32, 3, padding=1)
            y = torch.randn(1, 32, 40, 40)
            assert torch.allclose(M.run_modules([conv, nn.ReLU()], y), torch.relu(conv(y)), atol=1e-4)


def test_quick_benchmarks_end_to_end(tmp_path, monkeypatch):
    from reproduce.benchmarks.__main__ import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # main() sets it for its subprocesses; not for later tests
    results = tmp_path / "results"
    (results / "smoke").mkdir(parents=True)
    (results / "smoke" / "runs.json").write_text(json.dumps({
        "profile": "smoke", "last_invocation_s": 12.5, "updated": "2026-01-01T00:00:00+00:00",
        "notebooks": {"01_adain": {"status": "ok", "wall_s": 10.0}, "02_next": {"status": "failed", "wall_s": 2.5}}}))
    out = tmp_path / "bench"
    assert main(["--quick", "--threads", "1", "--out", str(out), "--results", str(results)]) == 0
    for name in ("stylization_quick.csv", "stylization_quick.md", "stylization_quick.json", "training_quick.csv",
                 "training_quick.md", "contextual_loss_quick.csv", "end_to_end.md", "end_to_end.csv",
                 "README_quick.md", *(("encoder_nnpack_quick.md",) if nnpack.available() else ())):
        assert (out / name).is_file(), name
    sty = json.loads((out / "stylization_quick.json").read_text())
    ran = [r for r in sty["rows"] if r.get("images_per_s")]
    assert {r["variant"] for r in ran} == {"reference", "before", "channels_last", "nnpack_op", "ours", "bf16"}
    for r in ran:
        if r["variant"] != "bf16":
            assert r["max_abs_diff"] < 1e-4, r
    e2e = (out / "end_to_end.md").read_text()
    assert "01_adain" in e2e and "(failed)" in e2e
    assert "Stylization" in (out / "README_quick.md").read_text()
    tra = json.loads((out / "training_quick.json").read_text())
    variants = {r["variant"] for r in tra["reference"]}
    assert {"reference (pytorch-AdaIN train loop)", "warm start (reconstruction)", "ours (contextual)"} <= variants
    assert all(r["x_reference"] > 0 for r in tra["reference"])
    assert "Against the reference training loop" in (out / "training_quick.md").read_text()
    if nnpack.available():  # the probe's patched steps compute the plain step's gradient
        probe = json.loads((out / "encoder_nnpack_quick.json").read_text())
        assert all(0 < probe["agreement"][k]["grad_rel_diff"] < 1e-3 for k in ("NNPACK pool", "NNPACK workers"))
        assert "NNPACK in the training step" in (out / "README_quick.md").read_text()
    # --end-to-end-only touches nothing else
    (out / "stylization_quick.md").unlink()
    assert main(["--end-to-end-only", "--out", str(out), "--results", str(results)]) == 0
    assert not (out / "stylization_quick.md").exists()


def test_reference_training_step_computes_the_adain_loss_of_ours(make_random_net):
    """The benchmark's reference train loop and ``ctxstyle.train.training_losses`` (AdaIN/MSE with
    unscaled losses, style images encoded every step) give the same losses on the same network,
    so the training benchmark compares two ways of computing one thing."""
    import numpy as np

    from ctxstyle.train import TrainConfig, training_losses
    from reproduce.benchmarks.reference_adain import ReferenceTrainer
    from reproduce.benchmarks.training import smooth_images

    gen = torch.Generator().manual_seed(3)
    content, style = smooth_images(2, 32, gen), smooth_images(2, 32, gen)
    net = make_random_net(np.asarray(content[0, 0]))
    cfg = TrainConfig(method="adain", loss_scale="none", style_weight=10.0, adain_layer="relu4_1")
    ours = training_losses(net, content, style, cfg)
    reference = ReferenceTrainer(net, cfg.style_layers, style_weight=10.0)
    loss_c, loss_s = reference.losses(content, style)
    assert float(loss_c.detach()) > 0 and float(loss_s.detach()) > 0
    assert torch.allclose(loss_c, ours["content"], rtol=1e-4)
    assert torch.allclose(loss_s, ours["style"], rtol=1e-4)
    before = [p.clone() for p in reference.decoder.parameters()]
    reference.step(content, style)
    assert any(not torch.equal(a, b) for a, b in zip(before, reference.decoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before, net.decoder.parameters()))  # a private copy


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_parallel_images_work_in_a_forked_child(net):
    """A child forked after the worker pool exists gets its own pool (no tasks waiting forever)."""
    import multiprocessing

    if not nnpack.available():
        pytest.skip("no usable NNPACK in this torch build")
    gen = torch.Generator().manual_seed(4)
    contents, style = torch.rand(2, 1, 64, 64, generator=gen), torch.rand(1, 1, 64, 64, generator=gen)
    torch.set_num_threads(2)
    try:
        sf = net.style_features(style)
        want = net.stylize(contents, [sf])  # creates the pool in this process
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_stylize_in_child, (net, contents, sf)).get(timeout=120)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(got, want)


def _stylize_in_child(net, contents, sf):
    torch.set_num_threads(2)
    one = net.style_features(contents[:1])  # one image: NNPACK's own 2-thread pool, made again here
    assert one.shape == sf.shape
    return net.stylize(contents, [sf]).clone()


def test_volume_benchmark_runs_the_command_on_a_volume(tmp_path):
    """``reproduce.benchmarks.volume`` runs ``ctxstyle stylize`` on a synthetic NIfTI volume and
    records its time per slice and batch from the command's own timing line."""
    from ctxstyle.train import TrainConfig, train
    from reproduce.benchmarks import volume

    ckpt = train(TrainConfig(image_size=32, batch_size=2, iterations=2, device="cpu", output_dir=str(tmp_path / "run")),
                 progress=False)
    result = volume.run(ckpt, (40, 36, 3), 1, tmp_path / "out")
    assert result["s_per_slice"] > 0 and result["batch"] >= 1 and result["wall_s"] >= result["stylize_s"]
    assert "40 x 36 x 3" in (tmp_path / "out" / "volume.md").read_text()


def _rendered_copy(tmp_path, module, record: str):
    """The committed ``results/benchmarks/<record>`` copied into ``tmp_path`` and rendered there by
    ``module --render``: (committed path, copy). Skips where the record is not committed."""
    recorded = REPO / "results" / "benchmarks" / record
    if not recorded.is_file():
        pytest.skip(f"no committed {record}")
    copy = tmp_path / recorded.name
    copy.write_text(recorded.read_text())
    assert module.main(["--render", str(copy)]) == 0
    return recorded, copy


def test_render_rewrites_a_recorded_run_with_the_same_numbers(tmp_path):
    """--render writes the report of a committed run again: same rows, bf16 worded by the CPU's kind."""
    recorded, copy = _rendered_copy(tmp_path, stylization, "cpu-avx512-bf16/stylization.json")
    before = json.loads(recorded.read_text())
    after = json.loads(copy.read_text())
    strip = [{k: v for k, v in r.items() if k != "status"} for r in before["rows"]]
    assert [{k: v for k, v in r.items() if k != "status"} for r in after["rows"]] == strip
    text = (tmp_path / "stylization.md").read_text()
    assert "not run (too slow)" not in text and "x faster than float32" in text  # a CPU with bf16 units
    assert stylization.speed_phrase(2.49) == "2.49x faster" and stylization.speed_phrase(0.25) == "4.00x slower"
    assert stylization.speed_phrase(1 / 137.7) == "138x slower" and stylization.speed_phrase(1 / 9.996) == "10x slower"


def test_isa_caps_are_recorded_and_turn_bf16_off(monkeypatch):
    from reproduce.benchmarks import machine

    for name in machine.ISA_CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    plain = machine.machine_info(1)
    assert plain["isa_cap"] == {} and not plain["bf16_capped"] and machine.flags_phrase(plain) == plain["cpu_flags"]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    capped = machine.machine_info(1)
    assert capped["isa_cap"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"} and capped["bf16_capped"]
    assert capped["cpu_flags"] == plain["cpu_flags"]  # the CPU's own flags stay as they are
    phrase = machine.flags_phrase(capped)
    assert phrase.startswith(capped["cpu_flags"] + "; **instruction sets capped** by ONEDNN_MAX_CPU_ISA=AVX2, "
                             "ATEN_CPU_CAPABILITY=avx2") and "not a measurement of one" in phrase
    units = "avx2 fma avx512f avx512_bf16"
    assert machine.bf16_usable({"cpu_flags": units, "bf16_capped": False})
    assert not machine.bf16_usable({"cpu_flags": units, "bf16_capped": True})
    assert not machine.bf16_usable({"cpu_flags": "avx2 fma"}) and machine.bf16_usable({"cpu_flags": units})
    assert "keeps oneDNN off them" in machine.bf16_hardware(units, capped=True)
    assert machine.bf16_hardware(units) == "this CPU has bf16 units (AVX512-BF16/AMX)"
    assert "no AVX512-BF16" in machine.bf16_hardware("avx2 fma", capped=True)


def test_a_stylization_folder_holds_one_cpu_kind(tmp_path):
    record = tmp_path / "stylization.json"
    stylization.check_same_kind(record, {"cpu_flags": "avx2 fma"})  # no record yet
    record.write_text(json.dumps({"meta": {"cpu_flags": "avx2 fma", "isa_cap": {}}}))
    stylization.check_same_kind(record, {"cpu_flags": "avx2 fma", "isa_cap": {}})
    for other in ({"cpu_flags": "avx2 fma avx512f"}, {"cpu_flags": "avx2 fma", "isa_cap": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}):
        with pytest.raises(SystemExit, match="stylization.json: recorded on another CPU kind"):
            stylization.check_same_kind(record, other)


def test_report_commands_name_caps_and_folder(tmp_path):
    from reproduce.benchmarks import machine

    cmd = "python -m reproduce.benchmarks --threads 2"
    assert machine.command_line({}, cmd, machine.DEFAULT_OUT) == cmd
    assert machine.command_line({}, cmd, None) == cmd
    assert (machine.command_line({"isa_cap": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}, cmd, machine.DEFAULT_OUT / "kind")
            == "ONEDNN_MAX_CPU_ISA=AVX2 " + cmd + " --out results/benchmarks/kind")
    assert machine.command_line({}, cmd, tmp_path) == f"{cmd} --out {tmp_path.resolve()}"


def test_encoder_nnpack_render_rewrites_a_recorded_probe(tmp_path):
    from reproduce.benchmarks import encoder_nnpack

    recorded, _ = _rendered_copy(tmp_path, encoder_nnpack, "encoder_nnpack.json")
    text = (tmp_path / "encoder_nnpack.md").read_text()
    assert text == "\n".join(encoder_nnpack.report_lines(json.loads(recorded.read_text()), tmp_path)) + "\n"
    assert f"--out {tmp_path.resolve()}" in text and encoder_nnpack.verdict(json.loads(recorded.read_text())) in text
    (tmp_path / "broken.json").write_text("[]")
    with pytest.raises(SystemExit, match="broken.json: not an encoder NNPACK probe record"):
        encoder_nnpack.main(["--render", str(tmp_path / "broken.json")])


def test_summary_judges_the_stylization_goal_per_cpu_kind(tmp_path):
    from reproduce.benchmarks.__main__ import _kinds_lines
    from reproduce.benchmarks.stylization import RUNS_FILE

    def record(folder, meta, runs=None):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "stylization.json").write_text(json.dumps({"meta": {"cpu": "Some CPU", **meta}}))
        if runs is not None:
            (folder / RUNS_FILE).write_text("ours_x_reference,ours_x_reference_rounds_median\n"
                                            + "".join(f"{a},{b}\n" for a, b in runs))

    record(tmp_path, {"cpu_flags": "avx2 fma"}, [(3.88, 3.98), (3.93, 3.93), (3.92, 4.03)])
    record(tmp_path / "cpu-other", {"cpu_flags": "avx2 fma avx512f"}, [(3.96, 3.96), (4.16, 4.16)])
    record(tmp_path / "capped", {"cpu_flags": "avx512f", "isa_cap": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}, [(4.2, 4.2)])
    record(tmp_path / "one-measure", {"cpu_flags": "avx2"}, [(4.1, ""), (3.9, 3.95), (4.3, "")])
    record(tmp_path / "no-runs", {"cpu_flags": "avx2"})
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a folder")
    text = "\n".join(_kinds_lines(tmp_path, quick=False))
    assert "| this folder | Some CPU, avx2 fma | 3 | 3.92 | 3.98 | not met |" in text
    assert "| `cpu-other/` | Some CPU, avx2 fma avx512f | 2 | 4.06 | 4.06 | met |" in text
    assert "| `capped/` | Some CPU, avx512f; **instruction sets capped** by ONEDNN_MAX_CPU_ISA=AVX2" in text
    assert "| 1 | 4.20 | 4.20 | a stand-in, not judged" in text
    # the median of rounds covers one run of three: said, and the goal met by one measure only
    assert "| `one-measure/` | Some CPU, avx2 | 3 | 4.10 | 3.95 (over 1 run) | met by one measure only" in text
    assert "no-runs" not in text and "empty" not in text and _kinds_lines(tmp_path, quick=True) == []


def _reference_row(variant, median_s, gflop, peak=200.0):
    return {"variant": variant, "step_median_s": median_s, "step_best_s": median_s, "gflop_per_step": gflop,
            "gflops": gflop / median_s, "fraction_of_peak": gflop / median_s / peak, "x_reference": 1.0}


def test_training_goal_lines_check_the_goal_and_what_float32_would_need():
    from reproduce.benchmarks import training

    ref = _reference_row(training.REFERENCE_LABEL, 1.0, 160.0)  # 160 GFLOP/s = 80% of a 200 GFLOP/s peak
    ours = {**_reference_row("ours (contextual)", 0.8, 120.0), "x_reference": 1.25}
    fast = {**_reference_row("ours (contextual) bf16", 0.45, 120.0), "x_reference": 2.2}
    text = " ".join(training.goal_lines([ref, ours, fast]))
    assert "`ours (contextual)` 1.25x: not met" in text and "`ours (contextual) bf16` 2.20x: met" in text
    # equal efficiency: 160 / 120 = 1.33x; the goal needs 120 GFLOP in 0.5 s = 240 GFLOP/s = 120% of the peak
    assert "it would be 1.33x the reference" in text and "240 GFLOP/s" in text and "120% of the float32 peak" in text
    assert "more than the peak" in text
    cheap = {**_reference_row("ours (contextual)", 0.8, 60.0), "x_reference": 1.25}  # 60 / 0.5 = 120 GFLOP/s
    assert "within the peak" in " ".join(training.goal_lines([ref, cheap]))
    assert training.goal_lines([ours]) == [] and training.goal_lines([]) == []
    assert training.goal_lines([ref, {**ours, "fraction_of_peak": None}]) == []  # no peak for ours: nothing claimed
    close = {**ours, "x_reference": 1.995}
    assert "`ours (contextual)` 1.995x: not met" in " ".join(training.goal_lines([ref, close]))


def test_training_render_rewrites_a_recorded_run(tmp_path):
    """--render writes training.md again from the committed record; the numbers stay those recorded."""
    from reproduce.benchmarks import training

    recorded, copy = _rendered_copy(tmp_path, training, "training.json")
    assert json.loads(copy.read_text()) == json.loads(recorded.read_text())
    text = (tmp_path / "training.md").read_text()
    ref = {r["variant"]: r for r in json.loads(recorded.read_text())["reference"]}[training.REFERENCE_LABEL]
    assert f"| {training.REFERENCE_LABEL} | {ref['step_median_s']:.3f} |" in text and "**Goal: 2x" in text
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(SystemExit, match="broken.json: not a training benchmark record"):
        training.main(["--render", str(tmp_path / "broken.json")])


@pytest.mark.skipif(not nnpack.available(), reason="NNPACK unavailable in this PyTorch build")
@pytest.mark.parametrize("runner", ["NNPACK pool", "NNPACK workers"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_encoder_nnpack_probe_changes_rounding_only(make_random_net, runner, channels_last):
    """The probe's patched encoder (NNPACK forward, transposed-kernel NNPACK input gradient, on two
    threads) gives the plain encoder's features and image gradient to rounding, through NNPACK
    (its plans made, its values not bitwise oneDNN's), in the input's memory layout; maps below
    16x16 stay on oneDNN; outside the block, also after an error inside it, the encoder is plain."""
    import numpy as np

    from reproduce.benchmarks.encoder_nnpack import NNPACKEncoder
    from reproduce.benchmarks.training import smooth_images

    x = smooth_images(2, 32, torch.Generator().manual_seed(5))
    net = make_random_net(np.asarray(x[0, 0]))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1"]
    patcher = NNPACKEncoder(net.encoder, runner)

    def features_and_gradient(patch):
        xx = x.clone().requires_grad_(True)
        with patch or contextlib.nullcontext() as patched:
            feats = net.encode(xx, layers)
            sum(f.pow(2).mean() for f in feats.values()).backward()
        return patched, feats, xx.grad

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _, plain, g0 = features_and_gradient(None)
        n, fast, g1 = features_and_gradient(patcher)
    finally:
        torch.set_num_threads(threads)
    assert n == 8  # conv1_2 .. conv4_1 (conv1_1 has 3 input channels)
    for name in layers:
        scale = plain[name].abs().max()
        assert (fast[name] - plain[name]).abs().max() <= 1e-4 * scale, name
        assert fast[name].is_contiguous(memory_format=torch.channels_last) == channels_last
    assert not torch.equal(fast["relu2_1"], plain["relu2_1"])  # NNPACK computed it, not oneDNN
    assert (g1 - g0).norm() <= 1e-4 * g0.norm() and not torch.equal(g1, g0)
    plans = {conv: sorted(p.plans) for conv, p in patcher.plans.items()}
    conv1_2, conv3_1 = net.encoder.stages["relu1_2"][0], net.encoder.stages["relu3_1"][0]
    assert plans[conv1_2] == [(False, 32, 32), (True, 32, 32)]  # forward and input-gradient plans
    assert plans[conv3_1] == []  # 8x8 maps: oneDNN
    assert "forward" not in vars(conv1_2)  # unpatched after the block
    with pytest.raises(ZeroDivisionError), patcher:
        assert "forward" in vars(conv1_2)
        1 / 0
    assert "forward" not in vars(conv1_2)
