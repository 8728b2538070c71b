"""The no-grad pass that evaluation and OE ranking share: logits and penultimate features
of every sample of an evaluation loader, computed once and scored afterwards."""
from __future__ import annotations

import numpy as np
import torch

from edge_ray.train.loop import StepOptions, autocast, to_device

# Evaluation forwards on the CPU go in chunks of this many images: small batches are faster
# per image there (benchmarks/README.md, "Design measurements"). A GPU takes the batch whole.
CPU_EVAL_CHUNK = 64


def eval_chunks(x: torch.Tensor, device) -> tuple[torch.Tensor, ...]:
    """``x`` split into the batches an evaluation forward on ``device`` runs (views, in order)."""
    if torch.device(device).type != "cpu" or x.shape[0] <= CPU_EVAL_CHUNK:
        return (x,)
    return x.split(CPU_EVAL_CHUNK)


@torch.no_grad()
def collect_outputs(model, loader, *, device: torch.device, amp: bool = False,
                    channels_last: bool = False, progress=None) -> dict:
    """Logits, penultimate features, targets and keys of every sample of an eval loader.

    Runs the backbone once (on the CPU in chunks of ``CPU_EVAL_CHUNK`` images); scores are
    computed afterwards from the cached arrays.
    """
    model.eval()
    opts = StepOptions(device=device, amp=amp, channels_last=channels_last)
    feats, logits, targets, keys = [], [], [], []
    for x, y, k in loader:
        for part in eval_chunks(to_device(x, opts), opts.device):
            with autocast(opts):
                f = model.forward_features(part)
                z = model.forward_head(f)
            feats.append(f.float().cpu().numpy())
            logits.append(z.float().cpu().numpy())
        targets.append(np.asarray(y, dtype=np.float32))
        keys.extend(k)
        if progress is not None:
            progress.update(len(k))
    if not keys:
        raise ValueError("the evaluation loader yielded no samples")
    return {"features": np.concatenate(feats), "logits": np.concatenate(logits),
            "targets": np.concatenate(targets), "keys": keys}
