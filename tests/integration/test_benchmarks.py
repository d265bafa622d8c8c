"""The benchmark scripts still run (on a tiny case, in seconds). No timing assertions."""

from __future__ import annotations

import json
import os
import sys
from ..support.paths import ROOT

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


def test_bench_sharded_runs_on_two_ranks_and_counts_one_collective_for_our_paths(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_sharded.py"), "--set", "smoke",
                           "--steps", "2", "--warmup", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (name,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    data = json.load(open(tmp_path / name))
    rows = {r["impl"]: r for r in data["rows"]}
    assert set(rows) == {"unsharded_fused", "fused", "foreach", "reference", "timm"}
    assert rows["unsharded_fused"]["collectives_per_step"] == 0
    assert all(rows[i]["collectives_per_step"] == 1 for i in ("fused", "foreach", "reference"))
    assert rows["timm"]["collectives_per_step"] > data["meta"]["tensors"]  # per-tensor collectives
    assert all(r["median_ms"] > 0 for r in rows.values())


def test_bench_sharded_lamb_counts_one_collective_without_clipping_and_two_with_it(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_sharded.py"), "--set", "smoke",
                           "--optimizer", "lamb", "--steps", "2", "--warmup", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (name,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    assert name.startswith("sharded-lamb-cpu-")
    data = json.load(open(tmp_path / name))
    rows = {r["impl"]: r for r in data["rows"]}
    assert set(rows) == {"unsharded_fused", "fused", "foreach", "reference", "timm"}
    assert rows["unsharded_fused"]["collectives_per_step"] == 0
    assert all(rows[i]["collectives_per_step"] == 2 for i in ("fused", "foreach", "reference"))  # clip + norms
    assert rows["timm"]["collectives_per_step"] > data["meta"]["tensors"]  # per-tensor collectives
    assert all(r["median_ms"] > 0 for r in rows.values())


def test_bench_flavours_runs_every_pair_and_writes_json_and_markdown(tmp_path):
    import bench_flavours

    assert bench_flavours.main(["--device", "cpu", "--sets", "smoke", "--steps", "2", "--warmup", "0",
                                "--out-dir", str(tmp_path)]) == 0
    (name,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    rows = {r["impl"]: r for r in json.load(open(tmp_path / name))["rows"]}
    assert set(rows) == set(bench_flavours.IMPLS)
    for impl in ("timm_fused", "larc_fused", "ssl_fused"):
        assert rows[impl]["speedup_vs_original"] > 0 and rows[impl]["x_seed_fused"] > 0
    assert (tmp_path / name.replace(".json", ".md")).exists()


def test_bench_lamb_runs_every_implementation_and_writes_json_and_markdown(tmp_path):
    import bench_lamb

    assert bench_lamb.main(["--device", "cpu", "--sets", "smoke", "--dtype", "float32,bfloat16", "--steps", "2",
                            "--warmup", "0", "--impls", ",".join(bench_lamb.IMPLS), "--out-dir", str(tmp_path)]) == 0
    (name,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    rows = json.load(open(tmp_path / name))["rows"]
    want = {(impl, dtype) for impl in bench_lamb.IMPLS for dtype in ("float32", "bfloat16")}
    assert {(r["impl"], r["dtype"]) for r in rows} == want
    assert all(r["median_ms"] > 0 and r["x_adamw_fused"] > 0 and r["speedup_vs_timm"] > 0 for r in rows)
    assert (tmp_path / name.replace(".json", ".md")).exists()


def test_the_bert_base_set_has_bert_bases_size():
    from param_sets import SETS, numel

    assert 108e6 < numel(SETS["bert_base"]()) < 111e6  # BERT-base: 110 M (with the pooler)
