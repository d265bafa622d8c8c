"""Lightning users: configure_optimizers returning the seed's factory and its
polynomial warm-up as a per-step scheduler.

    python examples/lightning_module.py
"""
import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lars_cuda import PolynomialWarmup, create_optimizer_lars


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        optimizer = create_optimizer_lars(self, lr=1.0, momentum=0.9, weight_decay=5e-4, bn_bias_separately=True)
        scheduler = PolynomialWarmup(optimizer, decay_steps=8, warmup_steps=2, power=2.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


if __name__ == "__main__":
    L.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, 10, generator=g), torch.randint(0, 3, (64,), generator=g)),
                      batch_size=16)
    model = Model()
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False)
    trainer.fit(model, data)
    lrs = [round(float(g["lr"]), 6) for g in trainer.optimizers[0].param_groups]
    print(f"{trainer.global_step} steps; lr now {lrs}")
