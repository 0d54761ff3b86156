"""`precision: bf16` on CUDA: what each model really runs in under the trainer's autocast, and what metrics.json says.

cuDNN's RNNs are cast to float16 under CUDA autocast whatever its dtype (aten/src/ATen/cudnn/AutocastRNN.cpp), so the
lstm's recurrent layers run in fp32 in a block with autocast off, and the record says `bf16 (lstm layers in fp32)`.
"""

from __future__ import annotations

import torch

from pipeline.config import TrainConfig
from pipeline.train.models import build_model, precision_of


def under_trainer_autocast(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The forward of `Trainer.forward_backward_step` with `precision: bf16` on a GPU."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=True):
        return model(x)


def test_the_lstm_layers_run_in_fp32_and_the_head_in_bf16_as_recorded():
    device = torch.device("cuda", 0)
    model = build_model(TrainConfig(model="lstm", precision="bf16"), 4, 1, n_bins=64).to(device)
    seen = {}
    model.lstm.register_forward_hook(lambda m, i, o: seen.update(lstm=o[0].dtype))
    model.head.register_forward_hook(lambda m, i, o: seen.update(head=o.dtype))
    logits = under_trainer_autocast(model, torch.randn(8, 1, 64, 101, device=device))
    assert seen == {"lstm": torch.float32, "head": torch.bfloat16}  # not float16, which cuDNN would pick
    torch.nn.functional.cross_entropy(logits.float(), torch.randint(0, 4, (8,), device=device)).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert precision_of("lstm", autocast=True) == "bf16 (lstm layers in fp32)"


def test_the_cnn_runs_in_bf16_as_recorded():
    device = torch.device("cuda", 0)
    model = build_model(TrainConfig(model="cnn", precision="bf16"), 4, 1).to(device)
    seen = {}
    model.features.register_forward_hook(lambda m, i, o: seen.update(features=o.dtype))
    logits = under_trainer_autocast(model, torch.randn(8, 1, 64, 101, device=device))
    assert seen["features"] == torch.bfloat16 and logits.dtype == torch.bfloat16
    assert precision_of("cnn", autocast=True) == "bf16"
