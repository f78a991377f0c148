"""Writes model/weights.pt (a state_dict). Stands in for real training: seeded, a few steps."""

import numpy as np
import torch

from classifier import build

if __name__ == "__main__":
    torch.manual_seed(0)
    model = build()
    x = torch.randn(256, 16)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(torch.log(model(x)), y)
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), "model/weights.pt")
    held_out = torch.randn(200, 16)
    labels = (held_out[:, 0] > 0).long() + (held_out[:, 1] > 1).long()
    np.savez("data/calibration.npz", features=held_out.numpy(), labels=labels.numpy())
    print(f"wrote model/weights.pt (loss {loss.item():.3f}) and data/calibration.npz")
