"""benchmarks.step_time at a tiny size: the JSON's schema, the markdown table, equal parameter counts."""

import json

import pytest

pytest.importorskip("torch")

from benchmarks import step_time  # noqa: E402


def test_tiny_sweep_writes_json_and_table(tmp_path):
    out = tmp_path / "st.json"
    step_time.main(["--all", "--archs", "unet", "--points", "2x32", "--features", "4", "--depth", "2",
                    "--steps", "2", "--warmup", "1", "--rounds", "1", "--no-compile", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["benchmark"] == "step_time" and r["machine"]["device"] and r["matmul_peak"]["fp32"]["tflops"] > 0
    (p,) = r["points"]
    assert (p["arch"], p["batch_size"], p["image_size"], p["precision"]) == ("unet", 2, 32, "fp32")
    assert p["params"]["jax"] == p["params"]["torch"] > 0
    assert p["errors"] == {}
    for kind in ("train", "infer"):
        block = p[kind]
        assert block["flops"] > 0
        assert set(block["modes"]) == {"jax", "torch_eager"}  # compile skipped
        for mode in block["modes"].values():
            assert mode["calls"] == 2 and mode["median_s"] > 0
            assert mode["images_per_s"] == pytest.approx(2 / mode["median_s"])
            assert mode["tflops"] == pytest.approx(block["flops"] / mode["median_s"] / 1e12)
        jax_s = block["modes"]["jax"]["median_s"]
        assert block["ratios"] == {"jax_over_torch_eager": pytest.approx(block["modes"]["torch_eager"]["median_s"] / jax_s)}
        assert block["modes"]["jax"]["compile_s"] > 0
    # A train step costs more than the forward pass alone (backward ~2x forward).
    assert p["train"]["flops"] > 2 * p["infer"]["flops"]
    table = out.with_suffix(".md").read_text()
    assert "| unet | 2x32 | fp32 | train |" in table and "| unet | 2x32 | fp32 | infer |" in table

    # --recount-flops rebuilds the point's programs: a file whose FLOPs were miscounted (XLA's
    # GPU count missed every convolution) gets the sweep's own count and the rates that follow.
    peak = r["matmul_peak"]["fp32"]["tflops"]
    counted = {kind: p[kind]["flops"] for kind in ("train", "infer")}
    for kind in ("train", "infer"):
        r["points"][0][kind]["flops"] = 1.0
        for mode in r["points"][0][kind]["modes"].values():
            mode["tflops"] = mode["peak_fraction"] = 0.0
    out.write_text(json.dumps(r))
    step_time.main(["--recount-flops", str(out)])
    again = json.loads(out.read_text())
    assert again["flops_counted_by"].startswith("benchmarks/flops.py")
    for kind in ("train", "infer"):
        block = again["points"][0][kind]
        assert block["flops"] == counted[kind]
        for mode in block["modes"].values():
            assert mode["tflops"] == pytest.approx(block["flops"] / mode["median_s"] / 1e12)
            assert mode["peak_fraction"] == pytest.approx(mode["tflops"] / peak)


def test_parse_points():
    assert step_time.parse_points("8x256,32X512") == [(8, 256), (32, 512)]
