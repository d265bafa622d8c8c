"""timm users: one line makes timm's optimizer factory build lars_cuda's fused LARS by
name, with timm's parameter grouping (no weight decay for biases and norm layers).

    python examples/timm_factory.py
"""
import timm
import torch
from timm.optim import create_optimizer_v2

import lars_cuda.compat

lars_cuda.compat.register_timm()  # adds fusedlars, fusedlarc, fusednlars, fusednlarc

torch.manual_seed(0)
model = timm.create_model("resnet10t", num_classes=4)
optimizer = create_optimizer_v2(model, opt="fusedlarc", lr=0.5, weight_decay=1e-4, momentum=0.9)
x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
for step in range(3):
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    print(f"step {step}: loss {loss.item():.4f}")
print(f"{type(optimizer).__name__} with {len(optimizer.param_groups)} param groups; "
      f"trust_clip={optimizer.param_groups[0]['trust_clip']}")
