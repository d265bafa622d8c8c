"""Self-supervised users: a Barlow-Twins-style loop with SSLLars in place of the repo's
LARS (same arguments; biases and norm layers excluded from decay and adaptation).

    python examples/ssl_barlow_twins.py
"""
import torch

from lars_cuda.compat import SSLLars

torch.manual_seed(0)
backbone = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 16))
bn = torch.nn.BatchNorm1d(16, affine=False)
# as in the repos: weights in one group, biases and norms in another, lr set per step
weights = [p for p in backbone.parameters() if p.ndim > 1]
others = [p for p in backbone.parameters() if p.ndim == 1]
optimizer = SSLLars([{"params": weights}, {"params": others}], lr=0, weight_decay=1.5e-6)


def barlow_twins_loss(z1, z2, lambd=5e-3):
    c = bn(z1).T @ bn(z2) / z1.shape[0]
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    return on_diag + lambd * off_diag


data = torch.randn(64, 20)
for step in range(4):
    for group, scale in zip(optimizer.param_groups, (0.2, 0.0048)):
        group["lr"] = scale * 0.5  # the repos' lr for weights and biases
    x1, x2 = data + 0.1 * torch.randn_like(data), data + 0.1 * torch.randn_like(data)
    optimizer.zero_grad()
    loss = barlow_twins_loss(backbone(x1), backbone(x2))
    loss.backward()
    optimizer.step()
    print(f"step {step}: loss {loss.item():.3f}")
state = optimizer.state_dict()
print(f"state keys: {sorted(next(iter(state['state'].values())))}; group keys: "
      f"{sorted(k for k in state['param_groups'][0] if k != 'params')}")
