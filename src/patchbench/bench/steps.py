"""A per-image attack run in chunks, and the iteration at which each image was first fooled.

Chunks (``[experiment] attack_batch``): a per-image attack's images are independent (PatchZero §4.1
masked PGD optimises each image's own patch), so the pool may be attacked ``attack_batch`` images
at a time with one generator, chunk after chunk. With ``early_stop`` a chunk ends once all its images
are fooled, so an easy image stops costing as soon as its chunk is done rather than when the
hardest image of the whole pool is. (The placements and random starts are drawn per chunk, so the
numbers are those of this chunking — the chunk size is part of the cell's key.)

First success: while the attack runs, a forward hook on the bare model reads the class of every
image at every iterate (the same logits the attack scores). ``success_step[i]`` is the first iterate
``t`` (0 = the start point, before any step) at which image ``i`` was misclassified (targeted: took
the target), ``-1`` if never. It is only recorded where the calls can be matched to iterates one to
one — one clean forward, then one forward per iterate on the whole chunk (:data:`STEP_ATTACKS`), and
a single restart —
and it is checked against the attack's own per-image success (the best iterate kept is a successful
one exactly when some iterate succeeded); if they disagree it is dropped. From it the cell reports
``asr_by_step``: the success rate over the correctly classified images after ``t`` iterations,
t = 0 … steps (a sweep of ``steps`` would give the same numbers at many times the cost, since the
iterates of a shorter run are the first ones of a longer run from the same start).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

#: attacks known to make one forward pass per iterate on the whole batch (masked PGD's
#: ``sign_ascent``), after one clean forward: their calls line up with the iterates
STEP_ATTACKS = ("masked-pgd",)


def _record(model):
    """A forward hook on ``model`` that keeps the argmax of each call's output (detached)."""
    calls: List[Tensor] = []

    def hook(_module, _inputs, output):
        if isinstance(output, Tensor) and output.dim() == 2:
            calls.append(output.detach().argmax(1))
    return calls, model.register_forward_hook(hook)


def _first_success(calls: List[Tensor], y: Tensor, target: Optional[Tensor], success: Tensor):
    """Per-image first successful iterate from the recorded calls (module doc), or None when the
    calls do not line up with the iterates or disagree with ``success``."""
    n = y.shape[0]
    if len(calls) < 2 or any(c.shape[0] != n for c in calls):
        return None
    preds = torch.stack(calls[1:]).to(y.device)                 # iterates 0 … T
    hit = preds != y if target is None else preds == target.to(y.device)
    any_hit = hit.any(0)
    if not torch.equal(any_hit.cpu(), success.detach().bool().cpu()):
        return None
    first = hit.float().argmax(0)
    return torch.where(any_hit, first, torch.full_like(first, -1)).long().cpu()


def run_chunked(attack, model, x: Tensor, y: Tensor, threat, generator, chunk: Optional[int]):
    """``attack.run`` on ``x`` (a chunk of ``chunk`` images at a time, all with ``generator``),
    with ``info["success_step"]`` (module doc) where it can be measured."""
    from ..attacks.base import AttackResult
    n = x.shape[0]
    chunk = n if not chunk or not getattr(attack, "per_image", True) else min(int(chunk), n)
    measurable = isinstance(model, torch.nn.Module) and getattr(attack, "name", "") in STEP_ATTACKS \
        and int(getattr(attack, "restarts", 1) or 1) == 1
    parts, steps = [], []
    for start in range(0, n, chunk):
        xs, ys = x[start:start + chunk], y[start:start + chunk]
        calls, handle = _record(model) if measurable else ([], None)
        try:
            res = attack.run(model, xs, ys, threat, generator=generator)
        finally:
            if handle is not None:
                handle.remove()
        steps.append(_first_success(calls, ys, None, res.success) if measurable else None)
        parts.append(res)
    if len(parts) == 1:
        res = parts[0]
    else:
        res = AttackResult(
            x_adv=torch.cat([r.x_adv for r in parts]), patch=torch.cat([r.patch for r in parts]),
            mask=torch.cat([r.mask for r in parts]), success=torch.cat([r.success for r in parts]),
            history=_mean_history([r.history for r in parts], [r.x_adv.shape[0] for r in parts]),
            info=_cat_info([r.info or {} for r in parts]),
            eligible=None if parts[0].eligible is None else torch.cat([r.eligible for r in parts]))
    if steps and all(s is not None for s in steps):
        res.info = {**(res.info or {}), "success_step": torch.cat(steps)}
    return res


def _mean_history(histories, sizes) -> list:
    """The mean loss per iterate over the chunks still running at that iterate (weighted by their
    images)."""
    out = []
    for t in range(max((len(h) for h in histories), default=0)):
        pts = [(h[t], s) for h, s in zip(histories, sizes) if t < len(h)]
        out.append(sum(v * s for v, s in pts) / sum(s for _, s in pts))
    return out


def _cat_info(infos) -> dict:
    out = {}
    for k in infos[0]:
        vals = [i.get(k) for i in infos]
        if all(isinstance(v, Tensor) and v.dim() for v in vals):
            out[k] = torch.cat([v.cpu() for v in vals])
        elif all(v is None for v in vals):
            out[k] = None
        else:
            out[k] = vals[0]
    return out


def asr_by_step(success_step: Tensor, eligible: Tensor, steps: int) -> Optional[list]:
    """Success rate over the ``eligible`` images after t = 0 … ``steps`` iterations."""
    if not isinstance(success_step, Tensor) or success_step.shape != eligible.shape:
        return None
    k = int(eligible.sum())
    if not k:
        return None
    s = success_step[eligible.cpu().bool()]
    hit = s[s >= 0]
    counts = torch.bincount(hit, minlength=steps + 1)[:steps + 1].cumsum(0)
    return [float(c) / k for c in counts]


__all__ = ["run_chunked", "asr_by_step"]
