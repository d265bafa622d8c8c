"""The benchmark scripts still run (on a tiny case, in seconds). No timing assertions."""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_bench_step_runs_on_a_tiny_set_and_writes_json_markdown_and_plot(tmp_path, capsys):
    import bench_step

    assert bench_step.main(["--device", "cpu", "--sets", "smoke", "--steps", "3", "--warmup", "1",
                            "--impls", "reference,foreach,fused,timm,sgd_fused", "--out-dir", str(tmp_path)]) == 0
    files = sorted(os.listdir(tmp_path))
    assert [f.rsplit(".", 1)[1] for f in files] == ["json", "md", "png"]
    data = json.load(open(tmp_path / files[0]))
    impls = {r["impl"] for r in data["results"]}
    assert impls == {"reference", "foreach", "fused", "timm", "sgd_fused"}
    for r in data["results"]:
        assert r["median_us"] > 0 and len(r["times_us"]) == 3
        assert r["x_sgd_fused"] > 0 and r["launches_per_step"] >= 1
    assert data["meta"]["copy_bandwidth_bytes_per_s"] > 0
    assert "| fused |" in capsys.readouterr().out


def test_parameter_sets_have_the_documented_sizes():
    from param_sets import SETS, numel

    resnet50 = SETS["resnet50"]()
    assert len(resnet50) == 161 and numel(resnet50) == 25_557_032
    assert 330e6 < numel(SETS["bert_large"]()) < 345e6
    assert len(SETS["tiny_10k"]()) == 10_000
