"""``python -m lars_cuda`` and what a user sees when the compiled library does not
load: a real load failure is made by a copy of the package whose ``_C`` library
needs a symbol that no library defines, which is what a torch upgraded after the
build gives ("undefined symbol")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

import lars_cuda
from lars_cuda import build_facts, diagnostics, ops

from ..support.machine import expected_kernel
from ..support.paths import ROOT


def _run(code_or_module, *, cwd=None, module=False, env=None):
    args = [sys.executable, "-W", "always", *(["-m", code_or_module] if module else ["-c", code_or_module])]
    merged = {**os.environ, **(env or {})}  # a value of None removes the variable
    proc = subprocess.run(args, cwd=cwd, env={k: v for k, v in merged.items() if v is not None},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, proc.stderr


def test_the_version_is_the_one_in_version_py():
    from lars_cuda import _version

    from importlib.metadata import version

    assert lars_cuda.__version__ == _version.__version__ == version("lars_cuda")  # the installed metadata too


def test_the_report_names_versions_builds_and_the_kernel_that_runs_here():
    out, _ = _run("lars_cuda", module=True, env={"LARS_CUDA_CPU_KERNEL": ""})
    info = build_facts.build_info()
    assert f"lars_cuda {lars_cuda.__version__} at " in out
    assert f"torch running: {torch.__version__}" in out
    assert f"torch built against: {info['torch']}" in out
    assert "compiled extension: loaded" in out
    capability = torch.backends.cpu.get_cpu_capability()
    want = {"AVX512": "avx512", "AVX2": "avx2"}.get(capability, "default")
    assert f"CPU kernel that runs here: {expected_kernel(want)} (torch's own kernels run {capability}" in out
    assert f"CPU kernel builds: {', '.join(info['cpu_builds'])}" in out
    if info["with_cuda"]:
        assert "CUDA kernel: SASS " + ", ".join(info["cuda_sass"]) in out
    if not torch.cuda.is_available():
        assert "GPUs: none visible" in out


def test_the_build_records_the_cuda_code_it_compiled():
    info = build_facts.build_info()
    if not info["with_cuda"]:
        pytest.skip("a CPU-only build")
    if torch.cuda.is_available() or os.environ.get("TORCH_CUDA_ARCH_LIST"):
        pytest.skip("a build with a visible GPU or TORCH_CUDA_ARCH_LIST targets those architectures only")
    assert info["cuda_sass"] == ["sm_80", "sm_90"] and info["cuda_ptx"] == ["compute_90"]


def test_the_report_names_the_environment_switches_in_force():
    only = {"LARS_CUDA_CPU_KERNEL": "default", "LARS_CUDA_CPU_WAVE_MB": "8"}  # and none of the others
    out, _ = _run("lars_cuda", module=True, env={**dict.fromkeys(diagnostics.ENV_SWITCHES), **only})
    assert "environment switches in force: LARS_CUDA_CPU_KERNEL=default, LARS_CUDA_CPU_WAVE_MB=8" in out
    assert "CPU kernel that runs here: default (LARS_CUDA_CPU_KERNEL=default asked for it)" in out


_UNLOADABLE = r"""
/* A Python extension module that needs a C++ symbol of torch that no library
   defines, as lars_cuda._C does after torch is upgraded under it. */
extern void _ZN3c1014lars_test_gone_from_this_torchEv(void);
void* PyInit__C(void) { _ZN3c1014lars_test_gone_from_this_torchEv(); return 0; }
"""


@pytest.fixture
def package_that_fails_to_load(tmp_path):
    """A copy of lars_cuda whose _C library fails to load with "undefined symbol"."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the unloadable library")
    copy = tmp_path / "site" / "lars_cuda"
    shutil.copytree(os.path.dirname(lars_cuda.__file__), copy,
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    info = build_facts.build_info()
    info["torch"] = "2.11.0+cu130"  # the torch this copy claims to have been built against
    (copy / "_build_info.json").write_text(json.dumps(info))
    src = tmp_path / "unloadable.c"
    src.write_text(_UNLOADABLE)
    so = copy / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    return tmp_path / "site"


def test_a_library_that_no_longer_loads_gives_one_warning_with_the_rebuild_command(package_that_fails_to_load):
    code = ("import torch, lars_cuda\n"
            "from lars_cuda import ops, plan\n"
            "p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)\n"
            "opt = lars_cuda.Lars([p], lr=0.1); opt.step(); opt.step()\n"
            "print(lars_cuda.__file__, plan.choose_path(opt.param_groups[0], [p]), p.detach().tolist())\n")
    out, err = _run(code, cwd=package_that_fails_to_load)
    assert out.startswith(str(package_that_fails_to_load))
    assert " foreach " in out
    warnings = [line for line in err.splitlines() if "RuntimeWarning" in line]
    assert len(warnings) == 1, err
    assert "undefined symbol: _ZN3c1014lars_test_gone_from_this_torchEv" in warnings[0]
    assert f"built against torch 2.11.0+cu130 and this is torch {torch.__version__}" in warnings[0]
    assert "rebuild it with: " in warnings[0] and "pip install --no-build-isolation --no-deps" in warnings[0]
    q = torch.nn.Parameter(torch.ones(3))
    q.grad = torch.ones(3)
    opt = lars_cuda.Lars([q], lr=0.1, foreach=True)
    opt.step()
    opt.step()
    assert out.split(" ", 2)[2].strip() == str(q.detach().tolist())


def test_fused_true_without_a_loadable_library_warns_with_the_same_facts(package_that_fails_to_load):
    code = ("import warnings, torch, lars_cuda\n"
            "p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)\n"
            "lars_cuda.Lars([p], lr=0.1, fused=True).step()\n")
    _, err = _run(code, cwd=package_that_fails_to_load)
    asked = [line for line in err.splitlines() if "fused=True was asked for" in line]
    assert len(asked) == 1 and "undefined symbol" in asked[0] and "rebuild it with" in asked[0], err


def test_the_report_of_a_library_that_no_longer_loads_says_why_and_how_to_rebuild(package_that_fails_to_load):
    out, _ = _run("lars_cuda", module=True, cwd=package_that_fails_to_load)
    assert f"torch built against: 2.11.0+cu130 (CUDA {torch.version.cuda or 'none'})   <-- differs" in out
    assert "compiled extension: NOT LOADED -- it was built against torch 2.11.0+cu130" in out
    assert "undefined symbol" in out and "rebuild it with: " in out


def test_the_rebuild_command_of_a_source_checkout_is_an_editable_install():
    source = os.path.dirname(os.path.dirname(os.path.abspath(lars_cuda.__file__)))
    if not os.path.isfile(os.path.join(source, "setup.py")):
        pytest.skip("lars_cuda is installed from a wheel here")
    assert build_facts.rebuild_command() == f"{sys.executable} -m pip install --no-build-isolation --no-deps -e " \
                                            f"{source}"


def test_every_environment_switch_the_code_reads_is_listed():
    root = ROOT
    if not os.path.isdir(os.path.join(root, "csrc")):
        pytest.skip("needs the source tree")
    import re

    read = set()
    for folder, _, files in os.walk(os.path.join(root, "csrc")):
        for name in files:
            with open(os.path.join(folder, name)) as f:
                read |= set(re.findall(r'getenv\("([A-Z0-9_]+)"\)', f.read()))
    assert read and read <= set(diagnostics.ENV_SWITCHES), read - set(diagnostics.ENV_SWITCHES)


def test_the_cpu_kernel_reported_by_the_op_is_the_one_this_cpu_should_run():
    assert ops.cpu_kernel() == expected_kernel(os.environ.get("LARS_CUDA_CPU_KERNEL") or {
        "AVX512": "avx512", "AVX2": "avx2"}.get(torch.backends.cpu.get_cpu_capability(), "default"))
