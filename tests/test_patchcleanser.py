"""PatchCleanser (Xiang et al., USENIX Security 2022): mask set, double masking, certification."""
import itertools

import pytest
import torch
from torch import nn

from patchbench.defenses import Defended, PatchCleanser
from patchbench.defenses.patchcleanser import mask_positions, mask_set
from patchbench.models.base import ImageClassifier

S = 32


class DarkBlobModel(nn.Module):
    """Class 1 ("dark object") if some 3×3 neighbourhood is darker than 0.4 on average, else class 0.

    A dark patch anywhere fools it; grey (0.5) mask fill never triggers it.
    """

    def forward(self, x):
        dark = nn.functional.avg_pool2d(1 - x.mean(1, keepdim=True), 3, 1).amax(dim=(1, 2, 3))
        return torch.stack([torch.full_like(dark, 0.6), dark], 1) * 10


def model():
    return ImageClassifier(DarkBlobModel(), [0.0] * 3, [1.0] * 3, None, ["bright", "dark"], 3)


def bright(n=2):
    return torch.full((n, 3, S, S), 0.9)


@pytest.mark.parametrize("n,p,k", [(32, 5, 6), (224, 50, 6), (31, 7, 4), (10, 10, 3), (20, 1, 6)])
def test_every_patch_position_is_fully_covered_by_some_mask(n, p, k):
    m, starts = mask_positions(n, p, k)
    assert len(starts) <= k and m <= n and starts[-1] + m == n
    for t in range(n - p + 1):
        assert any(u <= t and t + p <= u + m for u in starts), (t, m, starts)


def test_mask_set_is_k_squared_masks_covering_every_2d_window():
    masks = mask_set((S, S), (5, 5), 6)
    assert masks.shape == (36, 1, S, S)
    for y, x in itertools.product(range(S - 4), range(S - 4)):
        assert masks[:, 0, y:y + 5, x:x + 5].amin(dim=(1, 2)).max() == 1


def test_certifies_and_recovers_the_label_under_a_patch():
    pc, m = PatchCleanser(patch_size=5, image_size=S, k=6), model()
    x, y = bright(), torch.zeros(2, dtype=torch.long)
    assert pc.certify(m, x, y).all()
    assert pc.last_forward_counts.tolist() == [36 * 37 // 2] * 2
    scores = pc.classify(m, x)
    assert scores.argmax(1).tolist() == [0, 0]
    assert pc.last_cases.tolist() == [1, 1] and pc.last_forward_counts.tolist() == [36, 36]
    xp = x.clone()
    xp[0, :, 3:8, 20:25] = 0.0                 # a 5×5 adversarial patch
    xp[1, :, 25:30, 1:6] = 0.0
    assert m(xp).argmax(1).tolist() == [1, 1]  # the undefended model is fooled
    scores = pc.classify(m, xp)
    assert scores.argmax(1).tolist() == [0, 0]  # double masking recovers the certified label
    assert pc.last_cases.tolist() == [2, 2]
    disagreers = 36 - (pc.last_forward_counts - 36) // 36
    assert ((pc.last_forward_counts - 36) % 36 == 0).all() and (disagreers > 0).all()


def test_not_certified_when_a_mask_pair_changes_the_prediction():
    pc, m = PatchCleanser(patch_size=4, image_size=S, k=4), model()
    x = bright(1)
    x[..., 2:6, 2:6] = 0.0                     # two real dark objects, label 1: no single mask
    x[..., 25:29, 25:29] = 0.0                 # hides both, but a pair of masks does
    y = torch.ones(1, dtype=torch.long)
    assert not pc.certify(m, x, y).any()
    assert pc.classify(m, x).argmax(1).item() == 1   # all one-mask predictions agree (case I)
    assert pc.last_cases.tolist() == [1]


def test_a_patch_sized_object_is_indistinguishable_from_a_patch():
    # the threat model's limit: one object of the patch's size is masked away like a patch
    pc, m = PatchCleanser(patch_size=4, image_size=S, k=4), model()
    x = bright(1)
    x[..., 10:14, 10:14] = 0.0
    assert m(x).argmax(1).item() == 1
    assert pc.classify(m, x).argmax(1).item() == 0 and pc.last_cases.tolist() == [2]


def test_scores_argmax_equals_the_double_masking_label_on_a_random_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    cls = ImageClassifier(net, [0.5] * 3, [0.3] * 3, None, list("abcde"), 3).eval()
    x = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    cls(x)
    pc = PatchCleanser(patch_size=0.05, image_size=(24, 24), k=3, batch_size=7)
    scores = pc.classify(cls, x)
    with torch.no_grad():
        first = torch.stack([cls(x * (1 - mk) + 0.5 * mk).argmax(1) for mk in pc.masks], 1)
    for i in range(4):   # Algorithm 1, written out with Python loops
        maj = first[i].mode().values
        label = maj
        for j in range(pc.num_masks):
            if first[i, j] != maj:
                u = torch.maximum(pc.masks[j], pc.masks)
                with torch.no_grad():
                    second = cls(x[i:i + 1] * (1 - u) + 0.5 * u).argmax(1)
                if (second == first[i, j]).all():
                    label = first[i, j]
                    break
        assert scores[i].argmax() == label
    assert Defended(cls, pc).predict(x)[0].tolist() == scores.argmax(1).tolist()


def test_patch_size_as_area_fraction_and_bad_sizes():
    assert PatchCleanser(0.05, 224).patch_size == (51, 51)     # ⌈sqrt(0.05·224²)⌉
    with pytest.raises(ValueError, match="larger than|does not fit"):
        PatchCleanser(40, 32)
    with pytest.raises(ValueError, match="does not fit"):
        PatchCleanser((8, 40), (32, 32))
    with pytest.raises(ValueError, match="area fraction"):
        PatchCleanser(1.5, 32)
    pc = PatchCleanser(4, 32)
    with pytest.raises(ValueError, match="32×32"):
        pc.classify(model(), torch.rand(1, 3, 28, 28))
    with pytest.raises(ValueError, match="labels"):
        pc.certify(model(), bright(2), torch.zeros(3, dtype=torch.long))
