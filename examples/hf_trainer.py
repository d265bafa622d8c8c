"""Hugging Face users: hand the optimizer class and its arguments to transformers.Trainer.

    python examples/hf_trainer.py
"""
import tempfile

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

import lars_cuda


class TinyRegression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def forward(self, x, labels=None):
        out = self.net(x).squeeze(-1)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


class Pairs(Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x.sum(1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


if __name__ == "__main__":
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=16, max_steps=4, report_to=[],
                                 use_cpu=True, logging_steps=1, save_strategy="no", disable_tqdm=True)
        trainer = Trainer(model=TinyRegression(), args=args, train_dataset=Pairs(),
                          optimizer_cls_and_kwargs=(lars_cuda.Lars, {"lr": 0.1, "momentum": 0.9, "eeta": 0.02}))
        trainer.train()
        used = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # (accelerate may wrap it)
        print(f"trained with {type(used).__name__}, "
              f"{trainer.state.global_step} steps, last loss {trainer.state.log_history[-2]['loss']:.4f}")
