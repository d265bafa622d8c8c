"""Deliberate breaks of the LAMB math (lars_cuda/lamb_functional.py), one at a time,
each against the LAMB tests: every break must make some test fail. A quick,
repeatable check of the tests' power while the LAMB kernel is not yet in the
C++ hand mutants (scripts/hand_mutations.py) and before a full `make mutation`.

    python scripts/lamb_breaks.py        # one line per break; exits 1 if one survives
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F = os.path.join(REPO, "lars_cuda", "lamb_functional.py")
TESTS = ["tests/unit/test_lamb.py", "tests/unit/test_lamb_compat.py", "tests/unit/test_lamb_sharded.py"]
orig = open(F).read()
# (what is broken, the text, the broken text)
BREAKS = [
    ('single: sqrt(v/b2) -> sqrt(v)',
     '    u = (m / bc1) / ((v / bc2).sqrt() + o.eps)',
     '    u = (m / bc1) / (v.sqrt() + o.eps)'),
    ('single: trust ratio inverted',
     'ratio = _trust_ratio(torch.linalg.vector_norm(p), torch.linalg.vector_norm(u), o)',
     'ratio = _trust_ratio(torch.linalg.vector_norm(u), torch.linalg.vector_norm(p), o)'),
    ('both: decay in the gradient ignored',
     '        g = g.add(p, alpha=wd)',
     '        g = g.add(p, alpha=0.0)'),
    ('sharded: caution scale not applied',
     '    u = u * s.to(compute)',
     '    u = u * 1.0'),
    ('sharded: caution norm without the cross term',
     'n2 = n2 + 2.0 * s * o.weight_decay * row[2] + o.weight_decay ** 2 * row[0]',
     'n2 = n2 + o.weight_decay ** 2 * row[0]'),
    ('sharded: a global norm off by 1 %',
     '        w, n = row[:2].sqrt().to(compute).unbind()',
     '        w, n = row[:2].sqrt().to(compute).unbind()\n        w = w * 1.01'),
    ('multi: beta3 always 1',
     'torch._foreach_add_(m32, g32, alpha=1.0 - beta1 if o.grad_averaging else 1.0)',
     'torch._foreach_add_(m32, g32, alpha=1.0)'),
    ('multi: eps dropped',
     '    torch._foreach_add_(denom, o.eps)',
     '    torch._foreach_add_(denom, 0.0)'),
    ('multi: decoupled decay without lr',
     'torch._foreach_sub_(p32, torch._foreach_mul(p32, scale * wd))',
     'torch._foreach_sub_(p32, torch._foreach_mul(p32, wd))'),
    ('multi: caution without its floor',
     '[mask / mask.mean().clamp_min(1e-3) for mask in masks])',
     'masks)'),
    ('both: trust clip off',
     '    return ratio.clamp_max(1.0) if o.trust_clip else ratio',
     '    return ratio'),
    ('clip: not at least 1',
     '    return (total / max_grad_norm).clamp_min(1.0)',
     '    return (total / max_grad_norm)'),
    ('sharded clip: not at least 1',
     '    return (sum_of_squares.sqrt().to(dtype) / max_grad_norm).clamp_min(1.0)',
     '    return (sum_of_squares.sqrt().to(dtype) / max_grad_norm)'),
]
survivors = 0
try:
    for name, a, b in BREAKS:
        assert orig.count(a) == 1, f"{name}: the text to break must occur once"
        with open(F, "w") as f:
            f.write(orig.replace(a, b))
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=REPO,
                           capture_output=True, text=True)
        survivors += r.returncode == 0
        print(f"{'SURVIVED' if r.returncode == 0 else 'killed  '} {name}: {r.stdout.strip().splitlines()[-1]}")
finally:
    with open(F, "w") as f:
        f.write(orig)
print(f"{len(BREAKS) - survivors} of {len(BREAKS)} breaks killed")
sys.exit(1 if survivors else 0)
