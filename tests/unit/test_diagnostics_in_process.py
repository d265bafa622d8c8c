"""The facts ``python -m lars_cuda`` reports and the warnings give, taken in this
process with the machine's facts replaced (build record, load error, CPU, GPUs),
so that every branch of lars_cuda/diagnostics.py, build_facts.py and
ops.fused_unavailable is seen. tests/integration/test_diagnostics.py
runs the real command and a real library that fails to load."""

from __future__ import annotations

import json
import os
import platform
import sys

import pytest
import torch

import lars_cuda
from lars_cuda import build_facts, diagnostics, ops

BUILD = {"torch": torch.__version__, "torch_cuda": "13.0", "with_cuda": True, "cuda_sass": ["sm_80", "sm_90"],
         "cuda_ptx": ["compute_90"], "cuda_home": "/usr/local/cuda", "cpu_builds": ["avx512", "avx2", "default"],
         "source": None}
PIP = f"{sys.executable} -m pip install --no-build-isolation --no-deps"


@pytest.fixture
def build(monkeypatch):
    """The build record the code reads, as the test sets it (a copy of BUILD)."""
    info = dict(BUILD)
    monkeypatch.setattr(build_facts, "build_info", lambda: info)
    return info


@pytest.fixture
def loaded(monkeypatch):
    monkeypatch.setattr(ops, "EXTENSION_ERROR", None)


@pytest.fixture
def no_switches(monkeypatch):
    for name in diagnostics.ENV_SWITCHES:
        monkeypatch.delenv(name, raising=False)


def _source_tree(folder, *, setup=True, pyproject=True):
    folder.mkdir(parents=True, exist_ok=True)
    if setup:
        (folder / "setup.py").write_text("")
    if pyproject:
        (folder / "pyproject.toml").write_text("")
    return str(folder)


# ---- the build record ----------------------------------------------------------------------------------------


def test_the_build_record_is_read_from_the_package_folder(monkeypatch, tmp_path):
    (tmp_path / "_build_info.json").write_text(json.dumps({"torch": "9.9"}))
    monkeypatch.setattr(build_facts, "PACKAGE_DIR", str(tmp_path))
    assert build_facts.build_info() == {"torch": "9.9"}


@pytest.mark.parametrize("content", [None, "{not json"])
def test_a_missing_or_broken_build_record_is_none(monkeypatch, tmp_path, content):
    if content is not None:
        (tmp_path / "_build_info.json").write_text(content)
    monkeypatch.setattr(build_facts, "PACKAGE_DIR", str(tmp_path))
    assert build_facts.build_info() is None


# ---- the rebuild command ------------------------------------------------------------------------------------


def test_a_package_imported_from_its_source_tree_rebuilds_editable(monkeypatch, tmp_path, build):
    root = _source_tree(tmp_path / "src")
    monkeypatch.setattr(build_facts, "PACKAGE_DIR", os.path.join(root, "lars_cuda"))
    assert build_facts.rebuild_command() == f"{PIP} -e {root}"


def test_an_installed_package_rebuilds_from_the_recorded_source(monkeypatch, tmp_path, build):
    build["source"] = _source_tree(tmp_path / "src")
    monkeypatch.setattr(build_facts, "PACKAGE_DIR", str(tmp_path / "site" / "lars_cuda"))
    assert build_facts.rebuild_command() == f"{PIP} --force-reinstall {build['source']}"


@pytest.mark.parametrize("missing", ["setup", "pyproject"])
def test_a_folder_without_setup_py_and_pyproject_is_no_source(monkeypatch, tmp_path, build, missing):
    build["source"] = _source_tree(tmp_path / "src", **{missing: False})
    monkeypatch.setattr(build_facts, "PACKAGE_DIR", str(tmp_path / "site" / "lars_cuda"))
    assert build_facts.rebuild_command() == f"{PIP} --force-reinstall <the lars_cuda source folder>"


def test_without_a_build_record_the_package_folder_s_parent_is_the_source(monkeypatch, tmp_path):
    root = _source_tree(tmp_path / "src")
    monkeypatch.setattr(build_facts, "build_info", lambda: None)
    monkeypatch.setattr(build_facts, "PACKAGE_DIR", os.path.join(root, "lars_cuda"))
    assert build_facts.rebuild_command() == f"{PIP} -e {root}"


def test_the_recorded_source_comes_before_the_package_folder_s_parent(monkeypatch, tmp_path, build):
    build["source"] = _source_tree(tmp_path / "recorded")
    here = _source_tree(tmp_path / "here")
    monkeypatch.setattr(build_facts, "PACKAGE_DIR", os.path.join(here, "lars_cuda"))
    assert build_facts.rebuild_command() == f"{PIP} --force-reinstall {build['source']}"


# ---- why the library did not load ---------------------------------------------------------------------------


def test_a_library_never_built_says_so(monkeypatch, build):
    monkeypatch.setattr(build_facts, "rebuild_command", lambda arch=None: "REBUILD")
    error = ModuleNotFoundError("No module named 'lars_cuda._C'", name="lars_cuda._C")
    assert build_facts.load_failure(error) == ("the compiled extension was never built here: ModuleNotFoundError: "
                                               "No module named 'lars_cuda._C'; rebuild it with: REBUILD")


def test_a_missing_symbol_after_a_torch_upgrade_names_both_versions(monkeypatch, build):
    monkeypatch.setattr(build_facts, "rebuild_command", lambda arch=None: "REBUILD")
    build["torch"] = "2.0.0"
    error = ImportError("_C.so: undefined symbol: _ZN3c10x")
    assert build_facts.load_failure(error) == (
        f"it was built against torch 2.0.0 and this is torch {torch.__version__} (torch's C++ ABI changes between "
        "releases): ImportError: _C.so: undefined symbol: _ZN3c10x; rebuild it with: REBUILD")


@pytest.mark.parametrize("case", ["same_torch", "other_module", "other_error", "no_record"])
def test_any_other_load_error_is_a_failed_load(monkeypatch, build, case):
    monkeypatch.setattr(build_facts, "rebuild_command", lambda arch=None: "REBUILD")
    error = {"same_torch": ImportError("undefined symbol: x"),
             "other_module": ModuleNotFoundError("No module named 'numpy'", name="numpy"),
             "other_error": OSError("bad ELF"), "no_record": ImportError("undefined symbol: x")}[case]
    if case == "no_record":
        monkeypatch.setattr(build_facts, "build_info", lambda: None)
    assert build_facts.load_failure(error) == (f"the compiled library failed to load: {type(error).__name__}: "
                                               f"{error}; rebuild it with: REBUILD")


# ---- why the fused kernel cannot run on a device ------------------------------------------------------------


def test_an_unloaded_library_is_why_no_device_runs_the_kernel(monkeypatch, build):
    monkeypatch.setattr(ops, "EXTENSION_ERROR", ImportError("undefined symbol: y"))
    monkeypatch.setattr(build_facts, "load_failure", lambda e: f"WHY({e})")
    assert ops.fused_unavailable(torch.device("cpu")) == \
        "lars_cuda's compiled kernels did not load (WHY(undefined symbol: y))"


def test_a_device_the_kernel_runs_on_has_no_problem(monkeypatch, loaded):
    monkeypatch.setattr(ops, "fused_runs_on", lambda device: device == torch.device("cuda", 0))
    monkeypatch.setattr(ops, "has_fused", lambda device: False)
    assert ops.fused_unavailable(torch.device("cuda", 0)) is None
    assert ops.fused_unavailable(torch.device("cuda", 1)) is not None


def test_a_card_the_build_has_no_code_for_names_the_card_and_the_rebuild(monkeypatch, loaded):
    monkeypatch.setattr(ops, "fused_runs_on", lambda device: False)
    monkeypatch.setattr(ops, "has_fused", lambda device: True)
    monkeypatch.setattr(ops, "describe_cuda_device", lambda device: f"CARD({device})")
    monkeypatch.setattr(ops, "cuda_arch", lambda device: f"ARCH({device})")
    monkeypatch.setattr(build_facts, "rebuild_command", lambda arch=None: f"HINT({arch})")
    assert ops.fused_unavailable(torch.device("cuda", 1)) == \
        "the fused kernel has no code for CARD(cuda:1); rebuild for this card: HINT(ARCH(cuda:1))"


def test_a_cpu_only_build_on_a_gpu_says_how_to_rebuild(monkeypatch, loaded, build):
    monkeypatch.setattr(ops, "fused_runs_on", lambda device: False)
    monkeypatch.setattr(ops, "has_fused", lambda device: False)
    monkeypatch.setattr(build_facts, "rebuild_command", lambda arch=None: "REBUILD")
    build["with_cuda"] = False
    assert ops.fused_unavailable(torch.device("cuda", 0)) == (
        "this build of lars_cuda has no CUDA kernel (built with LARS_CUDA_FORCE_CPU=1 or without nvcc); "
        "rebuild it with: REBUILD")


@pytest.mark.parametrize("device, record", [("cuda", "with_cuda"), ("cuda", None), ("meta", "cpu_only")])
def test_any_other_device_is_one_the_kernel_is_not_built_for(monkeypatch, loaded, build, device, record):
    monkeypatch.setattr(ops, "fused_runs_on", lambda d: False)
    monkeypatch.setattr(ops, "has_fused", lambda d: False)
    if record is None:
        monkeypatch.setattr(build_facts, "build_info", lambda: None)
    build["with_cuda"] = record == "with_cuda"
    assert ops.fused_unavailable(torch.device(device)) == f"the fused kernel is not built for {device}"


# ---- the CPU ---------------------------------------------------------------------------------------------------


def _cpu_choice_with(monkeypatch, kernel):
    """diagnostics._cpu_choice() where the extension reports ``kernel`` as the build it runs."""
    monkeypatch.setattr(ops, "cpu_kernel", lambda: kernel)
    return diagnostics._cpu_choice()


@pytest.mark.parametrize("capability, kernel, expected", [
    ("AVX512", "avx512", "avx512 (torch's own kernels run AVX512)"),
    ("AVX2", "avx2", "avx2 (torch's own kernels run AVX2)"),
    ("DEFAULT", "default", "default (torch's own kernels run DEFAULT)"),
    ("AVX512", "avx2", "avx2 (torch's own kernels run AVX512; this CPU cannot run the avx512 build)"),
])
def test_the_cpu_kernel_follows_torch_s_own_choice(monkeypatch, no_switches, capability, kernel, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert _cpu_choice_with(monkeypatch, kernel) == expected


@pytest.mark.parametrize("forced, kernel, expected", [
    ("default", "default", "default (LARS_CUDA_CPU_KERNEL=default asked for it)"),
    ("avx512", "avx2", "avx2 (LARS_CUDA_CPU_KERNEL=avx512 asked for it; this CPU cannot run the avx512 build)"),
])
def test_an_asked_for_cpu_kernel_is_reported_as_asked(monkeypatch, no_switches, forced, kernel, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setenv("LARS_CUDA_CPU_KERNEL", forced)
    assert _cpu_choice_with(monkeypatch, kernel) == expected


def _cpuinfo(monkeypatch, text):
    import io

    def fake_open(path, *args, **kwargs):
        assert path == "/proc/cpuinfo"
        if text is None:
            raise OSError("no /proc here")
        return io.StringIO(text)
    monkeypatch.setattr(diagnostics, "open", fake_open, raising=False)


def test_the_cpu_name_is_the_first_model_name_of_proc_cpuinfo(monkeypatch):
    _cpuinfo(monkeypatch, "processor\t: 0\nmodel name\t: AMD EPYC 7B13: 64-Core\nmodel name\t: other\n")
    assert diagnostics._cpu_name() == "AMD EPYC 7B13: 64-Core"


@pytest.mark.parametrize("text", [None, "processor\t: 0\n"], ids=["no-cpuinfo", "no-model-name"])
def test_without_a_model_name_the_cpu_is_named_by_platform(monkeypatch, text):
    _cpuinfo(monkeypatch, text)
    monkeypatch.setattr(platform, "processor", lambda: "PROC")
    assert diagnostics._cpu_name() == "PROC"
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "MACHINE")
    assert diagnostics._cpu_name() == "MACHINE"


# ---- the report ------------------------------------------------------------------------------------------------


@pytest.fixture
def machine(monkeypatch, loaded, no_switches):
    """A machine with no GPU, a known CPU and the kernel this CPU runs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(diagnostics, "_cpu_name", lambda: "CPU NAME")
    monkeypatch.setattr(diagnostics, "_cpu_choice", lambda: "KERNEL CHOICE")


def test_the_report_names_package_python_and_torch_first(build, machine):
    lines = diagnostics.report().splitlines()
    assert lines[0] == f"lars_cuda {lars_cuda.__version__} at {build_facts.PACKAGE_DIR}"
    assert lines[1] == f"python {platform.python_version()} ({sys.executable}), {platform.machine()}"
    assert lines[2] == f"torch running: {torch.__version__} (CUDA {torch.version.cuda or 'none'})"


def test_the_report_of_a_cuda_build(build, machine):
    assert diagnostics.report().splitlines()[3:] == [
        f"torch built against: {torch.__version__} (CUDA 13.0)",
        "CUDA kernel: SASS sm_80, sm_90; PTX compute_90 (toolkit /usr/local/cuda)",
        "CUDA kernel verified: device code executed on the CPU under the CUDA emulator of the tests "
        "(tests/support/cuda_emulator) in every make test; last run on a GPU: 2026-11-26 (NVIDIA H100); "
        "the LAMB kernel never yet",
        "CPU kernel builds: avx512, avx2, default",
        "compiled extension: loaded",
        "CPU: CPU NAME; CPU kernel that runs here: KERNEL CHOICE",
        "GPUs: none visible",
        "optimizers: Lars and the LARS flavours of lars_cuda.compat (fused kernel, foreach, loop); "
        "Lamb, TimmLamb, FusedLAMB (fused kernel, foreach, loop)",
        "environment switches in force: none",
    ]


def test_the_report_of_a_torch_without_cuda_says_none(monkeypatch, build, machine):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert diagnostics.report().splitlines()[2] == f"torch running: {torch.__version__} (CUDA none)"


def test_the_report_lists_every_ptx_target(build, machine):
    build.update(cuda_ptx=["compute_80", "compute_90"])
    assert "CUDA kernel: SASS sm_80, sm_90; PTX compute_80, compute_90 (toolkit /usr/local/cuda)" in \
        diagnostics.report().splitlines()


def test_the_report_of_a_cuda_build_without_sass_or_ptx_says_none(build, machine):
    build.update(cuda_sass=[], cuda_ptx=[])
    assert "CUDA kernel: SASS none; PTX none (toolkit /usr/local/cuda)" in diagnostics.report().splitlines()


def test_the_report_of_a_cpu_only_build_against_another_torch(build, machine):
    build.update(torch="2.0.0", torch_cuda=None, with_cuda=False, cpu_builds=["default"])
    assert diagnostics.report().splitlines()[3:6] == [
        "torch built against: 2.0.0 (CUDA none)   <-- differs from the torch running: rebuild",
        "CUDA kernel: not built (CPU-only build)",
        "CPU kernel builds: default",
    ]


def test_the_report_of_a_tree_never_built(monkeypatch, machine):
    monkeypatch.setattr(build_facts, "build_info", lambda: None)
    assert diagnostics.report().splitlines()[3] == \
        "torch built against: unknown (no _build_info.json: this source tree was never built)"


def test_the_report_of_a_library_that_did_not_load_says_what_runs_instead(monkeypatch, build, machine):
    monkeypatch.setattr(ops, "EXTENSION_ERROR", ImportError("gone"))
    monkeypatch.setattr(build_facts, "load_failure", lambda e: f"WHY({e})")
    lines = diagnostics.report().splitlines()
    assert lines[7:9] == ["compiled extension: NOT LOADED -- WHY(gone)",
                          "so: Lars runs its foreach path (exact, slower); fused=True warns and does the same"]
    assert not any(line.startswith("CPU: ") for line in lines)


def test_the_report_lists_each_visible_gpu_and_whether_the_kernel_runs_there(monkeypatch, build, machine):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(ops, "describe_cuda_device", lambda d: f"CARD{d.index}")
    monkeypatch.setattr(ops, "fused_unavailable", lambda d: None if d.index == 0 else "NO CODE")
    lines = diagnostics.report().splitlines()
    assert lines[-4:-2] == ["cuda:0 CARD0: fused kernel runs", "cuda:1 CARD1: no fused kernel -- NO CODE"]
    assert "GPUs: none visible" not in lines


def test_the_report_lists_the_switches_in_force_in_the_table_s_order(monkeypatch, build, machine):
    monkeypatch.setenv("LARS_CUDA_WAVE_MB", "4")
    monkeypatch.setenv("LARS_CUDA_CPU_KERNEL", "avx2")
    monkeypatch.setenv("LARS_CUDA_LAUNCH", "")  # set but empty: not in force
    assert diagnostics.report().splitlines()[-1] == \
        "environment switches in force: LARS_CUDA_CPU_KERNEL=avx2, LARS_CUDA_WAVE_MB=4"


def test_an_op_called_without_the_library_says_why_it_did_not_load(monkeypatch):
    monkeypatch.setattr(ops, "_C", None)
    monkeypatch.setattr(ops, "EXTENSION_ERROR", ImportError("gone"))
    monkeypatch.setattr(build_facts, "load_failure", lambda e: f"WHY({e})")
    with pytest.raises(RuntimeError) as info:
        ops.fused_lars_norms([torch.ones(2)], [torch.ones(2)], [1], [1])
    assert str(info.value) == "lars_cuda's compiled extension did not load, so its ops are unavailable: WHY(gone)"
