"""benchmarks.profile_step at a tiny size: both frameworks profiled, rows consistent, the HLO written."""

import gzip
import json

import pytest

pytest.importorskip("torch")

from benchmarks import profile_step  # noqa: E402


def test_tiny_profile_lists_the_dearest_operations(tmp_path):
    out = tmp_path / "prof.json"
    profile_step.main(["--batch-size", "2", "--image-size", "32", "--features", "4", "--depth", "2",
                       "--steps", "2", "--top", "5", "--out", str(out)])
    r = json.loads(out.read_text())
    assert (r["arch"], r["batch_size"], r["image_size"], r["precision"], r["steps"]) == ("unet", 2, 32, "fp32", 2)
    for name in ("jax", "torch"):
        block = r[name]
        rows = block["top"]
        assert 0 < len(rows) <= 5 and block["ops"] >= len(rows)
        assert [x["ms_per_step"] for x in rows] == sorted((x["ms_per_step"] for x in rows), reverse=True)
        assert sum(x["ms_per_step"] for x in rows) <= block["profiled_ms_per_step"] * (1 + 1e-9)
        for x in rows:
            assert x["share"] == pytest.approx(x["ms_per_step"] / block["profiled_ms_per_step"])
    kinds = r["jax"]["by_kind"]
    assert sum(k["ms_per_step"] for k in kinds) <= r["jax"]["profiled_ms_per_step"] * (1 + 1e-9)
    # Every profiled instruction is one of the compiled step's, whose HLO is written beside the JSON.
    hlo = gzip.open(out.with_suffix(".hlo.txt.gz"), "rt").read()
    assert all(f"{x['hlo_op']} = " in hlo for x in r["jax"]["top"])


def test_an_instruction_is_named_by_its_hlo_op_name_over_the_traces_label():
    # jax 0.11's GPU trace labels every kernel "XlaModule:"; the compiled HLO names the JAX operation.
    hlo = ('%cudnn-conv.60 = (f32[16,2,2,32]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), '
           'metadata={op_name="jit(train_step)/transpose(jvp(UNet))/up1/up/conv_general_dilated"}\n'
           '%copy.1 = f32[4]{0} copy(%c)\n')
    ops = {"cudnn-conv.60": [6e6, 2, "XlaModule:", "convertTensor_kernel"], "copy.1": [2e6, 2, "", "copy_kernel"]}
    s = profile_step.summarize(ops, 2, 5, profile_step.hlo_index(hlo))
    assert s["profiled_ms_per_step"] == pytest.approx(4.0)
    conv, copy = s["top"]
    assert (conv["hlo_op"], conv["ms_per_step"], conv["share"]) == ("cudnn-conv.60", pytest.approx(3.0), 0.75)
    assert conv["tf_op"] == "jit(train_step)/transpose(jvp(UNet))/up1/up/conv_general_dilated"
    assert (copy["tf_op"], copy["opcode"]) == ("", "copy")
    assert {k["kind"]: k["ms_per_step"] for k in s["by_kind"]} == {"conv_general_dilated": 3.0, "copy": 1.0}
