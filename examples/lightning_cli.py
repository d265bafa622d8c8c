"""Lightning users: name the optimizer on the command line (LightningCLI's class path).

    python examples/lightning_cli.py fit --optimizer lars_cuda.Lars --optimizer.lr 0.5 \
        --optimizer.momentum 0.9 --trainer.max_steps 4

Also works with lars_cuda.compat.TimmLars / SSLLars and their own arguments.
"""
import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI
from torch.utils.data import DataLoader, TensorDataset


class TinyClassifier(L.LightningModule):
    def __init__(self, width: int = 16):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(10, width), torch.nn.ReLU(), torch.nn.Linear(width, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss


class TinyData(L.LightningDataModule):
    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(64, 10, generator=g), torch.randint(0, 3, (64,), generator=g)),
                          batch_size=16)


if __name__ == "__main__":
    cli = LightningCLI(TinyClassifier, TinyData, seed_everything_default=0, save_config_callback=None,
                       trainer_defaults=dict(accelerator="cpu", logger=False, enable_checkpointing=False,
                                             enable_model_summary=False))
    print(f"trained with {type(cli.trainer.optimizers[0]).__module__}.{type(cli.trainer.optimizers[0]).__name__}, "
          f"{cli.trainer.global_step} steps")
