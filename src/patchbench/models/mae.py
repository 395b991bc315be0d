"""A small ViT masked autoencoder: PAIR's generator and MAEDefense's reconstructor.

Papers: He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (the architecture:
an encoder over the visible tokens only, a light decoder with a learned mask token); PAIR (ACM MM
2024), §4.2 Step 1–2, eqs. 5–12 (the generator ``G``: ``s×s`` tokens, a fully connected patch
embedding plus 1-D positional embeddings in raster order (eq. 8), an encoder (eq. 9), a decoder
that sees ``f_i + e_pos`` on visible tokens and ``e_mask + e_pos`` on masked ones (eq. 10) and
reconstructs every token (eqs. 11–12)).

Paper-vs-code choices (options of :class:`MaskedAutoencoder`):

* ``encoder_tokens="visible"`` (default): the encoder runs over the visible tokens only, as in MAE
  [12], which the paper's generator is "structured on" and initialised from, and as in the authors'
  code. ``"all"``: eqs. 7 and 9 read literally — masked tokens become zero-valued patches ``z`` and
  the encoder runs over all ``n`` embeddings; the decoder still replaces them by ``e_mask``.
* ``pos_embed="learned"`` (default): learned 1-D positional embeddings, ViT's (eq. 8, "following
  [10]"). ``"sincos-2d"``: MAE's fixed 2-D sine-cosine table, what the authors' code loads.
* The output is the decoder's prediction on *every* token (eq. 12), visible ones included, passed
  through a sigmoid so that it lies in [0, 1]; nothing of the input is pasted back.

Masks are boolean ``N×L`` tensors, ``True`` = masked (hidden from the encoder), ``L`` the number of
tokens in raster order. A learned class token is always visible (MAE's), so a mask hiding every
token is still well defined.

Example::

    mae = MaskedAutoencoder(image_size=64, patch_size=8)
    masked = random_token_mask(4, mae.num_tokens, 0.5, generator=0)
    x_rec = mae(x, masked)                     # N×3×64×64 in [0, 1]
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import (check_choice, check_device, check_fraction, check_images,
                           check_input_size, check_number, check_path, check_positive,
                           check_positive_int, make_generator)

FORMAT = "patchbench.mae/1"
SAMPLINGS = ("bernoulli", "exact")
POS_EMBEDS = ("learned", "sincos-2d")
ENCODER_TOKENS = ("visible", "all")


def random_token_mask(n: int, num_tokens: int, ratio: float = 0.5, generator=None,
                      sampling: str = "bernoulli", device="cpu") -> Tensor:
    """Random token masks: a boolean ``n×num_tokens`` tensor, ``True`` = masked (dropped).

    ``sampling="bernoulli"`` is PAIR eq. 6: every token is masked independently with probability
    ``ratio`` (α), so the count varies per image. ``"exact"`` masks exactly ``round(ratio·L)``
    tokens per image, a uniformly random subset (the authors' code: shuffle, drop one half).
    ``generator``: a ``torch.Generator`` (CPU) or an integer seed (None = seed 0); the masks are
    drawn on the CPU and moved to ``device``, so a seed gives the same masks on every device.
    """
    n, num_tokens = check_positive_int(n, "n"), check_positive_int(num_tokens, "num_tokens")
    ratio = check_fraction(ratio, "ratio")
    sampling = check_choice(sampling, "sampling", SAMPLINGS)
    g = make_generator(generator)
    return _random_token_mask(n, num_tokens, ratio, g, sampling).to(check_device(device))


def check_token_mask(masked, n: int, num_tokens: int, name: str = "masked") -> Tensor:
    """A boolean token mask ``n×num_tokens`` (or ``num_tokens``, shared by the batch) → ``n×L``."""
    if not isinstance(masked, Tensor) or masked.dtype != torch.bool:
        got = masked.dtype if isinstance(masked, Tensor) else type(masked).__name__
        raise TypeError(f"{name}: expected a boolean tensor N×{num_tokens} (True = masked token), "
                        f"got {got}")
    m = masked[None] if masked.dim() == 1 else masked
    if m.dim() != 2 or m.shape[1] != num_tokens or m.shape[0] not in (1, n):
        raise ValueError(f"{name}: expected shape {n}×{num_tokens} (one flag per token), got "
                         f"{tuple(masked.shape)}")
    return m.expand(n, -1)


def _random_token_mask(n: int, num_tokens: int, ratio: float, generator: Optional[torch.Generator],
                       sampling: str) -> Tensor:
    """:func:`random_token_mask` on validated arguments (inner loop: nothing is checked;
    ``generator=None`` draws from torch's global CPU generator)."""
    u = torch.rand(n, num_tokens, generator=generator)
    if sampling == "bernoulli":
        return u < ratio                                   # eq. 6: m_i = 0 when rand ≤ α
    k = min(num_tokens, max(0, int(round(ratio * num_tokens))))
    ranks = u.argsort(dim=1).argsort(dim=1)                # a uniformly random permutation
    return ranks < k


def fixed_token_mask(num_tokens: int, ratio: float = 0.5, seed: int = 0,
                     sampling: str = "bernoulli") -> Tensor:
    """The one mask ``1×num_tokens`` a fixed-mask PAIR uses (Table 3, "fixed mask"): drawn once from
    ``seed``; the trainer and the defense call this, so they agree."""
    from .._validation import check_seed
    g = torch.Generator().manual_seed(check_seed(seed, "seed"))
    return random_token_mask(1, num_tokens, ratio, g, sampling)


def _sincos_2d(dim: int, gh: int, gw: int) -> Tensor:
    """MAE's fixed 2-D sine-cosine positional table ``(gh·gw)×dim`` (raster order)."""
    if dim % 4:
        raise ValueError(f"pos_embed='sincos-2d' needs an embedding size divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64),
                            torch.arange(gw, dtype=torch.float64), indexing="ij")
    parts = []
    for pos in (ys.reshape(-1), xs.reshape(-1)):
        out = pos[:, None] * omega[None]
        parts += [out.sin(), out.cos()]
    return torch.cat(parts, 1).float()


class Block(nn.Module):
    """Pre-norm transformer block (ViT): ``x + MHSA(LN(x))``, then ``x + MLP(LN(x))``.

    ``keep``: optional boolean ``N×T`` (True = a real token); padded keys get no attention, so the
    real tokens' outputs do not depend on the padded ones at all (zero weight, zero gradient).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads: the embedding size {dim} must be divisible by the number of "
                             f"heads, got {heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        mask = None if keep is None else keep[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(a.transpose(1, 2).reshape(n, t, d))
        return x + self.mlp(self.norm2(x))


class MaskedAutoencoder(nn.Module):
    """ViT masked autoencoder at a fixed image size (MAE, He et al. 2022; PAIR §4.2 eqs. 7–12).

    Args:
        image_size: ``(H, W)`` or one int (square). Default 64.
        patch_size: token side ``s``; must divide ``H`` and ``W`` (PAIR Step 1). Default 8.
        channels: image channels (3 RGB, 1 grey). Default 3.
        dim, depth, heads: encoder width, blocks and attention heads. Default 128, 4, 4.
        decoder_dim, decoder_depth, decoder_heads: the decoder's (lighter than the encoder, as in
            MAE; sized so that PAIR's two passes plus a 64² MobileNetV2 hasher cost ≤ 3× the hasher
            alone: perf/pair_cost.py).
            Default 96, 2, 3.
        mlp_ratio: MLP hidden size / width. Default 4.0.
        mean, std: per-channel pixel normalisation inside the model (one value or one per
            channel); inputs and outputs stay in [0, 1]. Default 0.5 and 0.25.
        pos_embed: ``"learned"`` (eq. 8, ViT) or ``"sincos-2d"`` (MAE / the authors' code).
        encoder_tokens: ``"visible"`` (MAE, the authors' code) or ``"all"`` (eqs. 7, 9 literally).

    Shapes: ``forward(x, masked)``: ``x`` ``N×C×H×W`` in [0, 1], ``masked`` bool ``N×L`` (None = no
    token masked) → ``N×C×H×W`` in [0, 1]. ``L = (H/s)·(W/s)``.
    """

    def __init__(self, image_size: Union[int, Sequence[int]] = 64, patch_size: int = 8,
                 channels: int = 3, dim: int = 128, depth: int = 4, heads: int = 4,
                 decoder_dim: int = 96, decoder_depth: int = 2, decoder_heads: int = 3,
                 mlp_ratio: float = 4.0, mean: Union[float, Sequence[float]] = 0.5,
                 std: Union[float, Sequence[float]] = 0.25, pos_embed: str = "learned",
                 encoder_tokens: str = "visible"):
        super().__init__()
        if isinstance(image_size, int) and not isinstance(image_size, bool):
            image_size = (image_size, image_size)
        self.image_size = check_input_size(image_size, "image_size")
        if self.image_size is None:
            raise TypeError("image_size: expected (height, width) in pixels, got None")
        s = self.patch_size = check_positive_int(patch_size, "patch_size")
        h, w = self.image_size
        if h % s or w % s:
            raise ValueError(f"patch_size: {s} does not divide the image size {h}×{w}; PAIR cuts "
                             f"the image into s×s patches, so s must be a common divisor of H and "
                             f"W (e.g. {', '.join(str(d) for d in _divisors(h, w)[-3:])})")
        self.channels = check_positive_int(channels, "channels")
        self.grid = (h // s, w // s)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.pos_embed_kind = check_choice(pos_embed, "pos_embed", POS_EMBEDS)
        self.encoder_tokens = check_choice(encoder_tokens, "encoder_tokens", ENCODER_TOKENS)
        dims = {k: check_positive_int(v, k) for k, v in dict(
            dim=dim, depth=depth, heads=heads, decoder_dim=decoder_dim,
            decoder_depth=decoder_depth, decoder_heads=decoder_heads).items()}
        mlp_ratio = check_positive(mlp_ratio, "mlp_ratio")
        mean_t, std_t = _per_channel(mean, "mean", self.channels), _per_channel(std, "std",
                                                                              self.channels)
        if float(std_t.min()) <= 0:
            raise ValueError(f"std: expected values > 0, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))
        self._config = dict(image_size=list(self.image_size), patch_size=s, channels=self.channels,
                            **dims, mlp_ratio=mlp_ratio, mean=mean_t.tolist(), std=std_t.tolist(),
                            pos_embed=pos_embed, encoder_tokens=encoder_tokens)
        d, dd, p = dims["dim"], dims["decoder_dim"], self.channels * s * s
        self.patch_embed = nn.Linear(p, d)                     # FC(·) of eq. 8
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList(Block(d, dims["heads"], mlp_ratio)
                                    for _ in range(dims["depth"]))
        self.norm = nn.LayerNorm(d)
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))  # e_mask of eq. 10
        self.decoder_blocks = nn.ModuleList(Block(dd, dims["decoder_heads"], mlp_ratio)
                                            for _ in range(dims["decoder_depth"]))
        self.decoder_norm = nn.LayerNorm(dd)
        self.decoder_pred = nn.Linear(dd, p)
        if self.pos_embed_kind == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, d))
            self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dd))
        else:
            self.register_buffer("pos_embed", _sincos_2d(d, *self.grid)[None])
            self.register_buffer("decoder_pos_embed", _sincos_2d(dd, *self.grid)[None])
        self._init_weights()

    def _init_weights(self) -> None:
        # MAE's initialisation: xavier-uniform linears, N(0, 0.02) tokens and learned positions
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for t in (self.cls_token, self.mask_token):
            nn.init.normal_(t, std=0.02)
        if self.pos_embed_kind == "learned":
            nn.init.normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.decoder_pos_embed, std=0.02)

    @property
    def config(self) -> dict:
        """The constructor arguments (plain values): ``MaskedAutoencoder(**config)`` rebuilds it."""
        return dict(self._config)

    # ------------------------------------------------------------------ tokens <-> pixels
    def patchify(self, x: Tensor) -> Tensor:
        """``N×C×H×W`` → ``N×L×(C·s·s)`` tokens in raster order (unchecked)."""
        n, c, s, (gh, gw) = x.shape[0], self.channels, self.patch_size, self.grid
        t = x.reshape(n, c, gh, s, gw, s).permute(0, 2, 4, 1, 3, 5)
        return t.reshape(n, gh * gw, c * s * s)

    def unpatchify(self, t: Tensor) -> Tensor:
        """Inverse of :meth:`patchify` (unchecked)."""
        n, c, s, (gh, gw) = t.shape[0], self.channels, self.patch_size, self.grid
        return t.reshape(n, gh, gw, c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(n, c, gh * s, gw * s)

    def pixel_mask(self, masked: Tensor) -> Tensor:
        """Token mask ``N×L`` → pixel mask ``N×1×H×W`` (float 0/1, 1 = pixel of a masked token)."""
        s = self.patch_size
        m = masked.to(torch.float32).view(-1, 1, *self.grid)
        return m.repeat_interleave(s, 2).repeat_interleave(s, 3)

    def check_input(self, x, name: str = "x") -> Tensor:
        """``x`` checked as images of this model's size and channels (``ValueError`` otherwise)."""
        x = check_images(x, name)
        if x.shape[1] != self.channels or tuple(x.shape[-2:]) != self.image_size:
            h, w = self.image_size
            raise ValueError(f"{name}: this masked autoencoder was built for "
                             f"{self.channels}×{h}×{w} images, got {x.shape[1]}×{x.shape[-2]}×"
                             f"{x.shape[-1]}; resize the images or train a model for this size")
        return x

    def check_mask(self, masked, n: int, name: str = "masked") -> Tensor:
        """A boolean token mask ``n×L`` (or ``L``, shared by the batch), returned as ``n×L``."""
        return check_token_mask(masked, n, self.num_tokens, name)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, masked: Optional[Tensor] = None) -> Tensor:
        """Reconstruct ``x`` (``N×C×H×W``, checked) from the tokens ``masked`` leaves visible."""
        x = self.check_input(x)
        if masked is not None:
            masked = self.check_mask(masked, x.shape[0]).to(x.device)
        return self.reconstruct(x, masked)

    def reconstruct(self, x: Tensor, masked: Optional[Tensor]) -> Tensor:
        """:meth:`forward` without the input checks (attack and training loops)."""
        dtype = x.dtype
        z = x.to(self.patch_embed.weight.dtype)
        n, big_l = z.shape[0], self.num_tokens
        if masked is None:
            masked = torch.zeros(n, big_l, dtype=torch.bool, device=z.device)
        if self.encoder_tokens == "all":                      # eq. 7: masked patches → zeros
            z = z * (1 - self.pixel_mask(masked).to(z))
        tokens = self.patch_embed(self.patchify((z - self.mean.to(z)) / self.std.to(z)))
        tokens = tokens + self.pos_embed
        cls = self.cls_token.expand(n, -1, -1)
        if self.encoder_tokens == "all":
            feats = self._encode(torch.cat([cls, tokens], 1), None)
            dec = self.decoder_embed(feats)
            body = torch.where(masked[..., None], self.mask_token.to(dec), dec[:, 1:])
        else:
            body, dec_cls = self._encode_visible(tokens, cls, masked)
            dec = dec_cls
        y = torch.cat([dec[:, :1], body + self.decoder_pos_embed], 1)
        for blk in self.decoder_blocks:
            y = blk(y)
        pred = self.decoder_pred(self.decoder_norm(y))[:, 1:]
        return torch.sigmoid(self.unpatchify(pred)).to(dtype)

    def _encode(self, seq: Tensor, keep: Optional[Tensor]) -> Tensor:
        for blk in self.blocks:
            seq = blk(seq, keep)
        return self.norm(seq)

    def _encode_visible(self, tokens: Tensor, cls: Tensor, masked: Tensor) -> Tuple[Tensor, Tensor]:
        """Encoder over the visible tokens only (MAE): returns the decoder's token inputs ``N×L×D'``
        (visible: projected features; masked: ``e_mask``) and its class token ``N×1×D'``."""
        n, big_l, d = tokens.shape
        counts = (~masked).sum(1)
        k = int(counts.max()) if n else 0
        order = torch.argsort(masked.to(torch.uint8), dim=1, stable=True)  # visible first, in order
        vis = torch.gather(tokens, 1, order[:, :k, None].expand(-1, -1, d))
        keep = None
        if bool((counts != k).any()):       # Bernoulli masks: pad to the largest visible count
            keep = torch.arange(k + 1, device=tokens.device)[None] <= counts[:, None]
        feats = self.decoder_embed(self._encode(torch.cat([cls, vis], 1), keep))
        dd = feats.shape[-1]
        sorted_all = torch.cat([feats[:, 1:], feats.new_zeros(n, big_l - k, dd)], 1)
        back = torch.gather(sorted_all, 1, order.argsort(dim=1)[..., None].expand(-1, -1, dd))
        body = torch.where(masked[..., None], self.mask_token.to(back).expand(n, big_l, dd), back)
        return body, feats[:, :1]


def _divisors(h: int, w: int):
    g = math.gcd(h, w)
    return [d for d in range(1, g + 1) if g % d == 0]


def _per_channel(value, name: str, channels: int) -> Tensor:
    vals = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(vals) not in (1, channels):
        raise ValueError(f"{name}: expected 1 or {channels} values (one per channel), got "
                         f"{len(vals)}")
    vals = [check_number(v, name) for v in vals]
    return torch.tensor(vals * (channels if len(vals) == 1 else 1), dtype=torch.float32)


# ---------------------------------------------------------------------- checkpoints
def save_mae(model: MaskedAutoencoder, path, settings: Optional[dict] = None, **meta) -> str:
    """Write ``model`` (config + weights), the defense ``settings`` it was trained for (``mask``,
    ``mask_ratio``, ``sampling``, ``mask_seed``) and plain ``meta`` to ``path``, atomically."""
    from .._io import atomic_save
    if not isinstance(model, MaskedAutoencoder):
        raise TypeError(f"model: expected a MaskedAutoencoder, got {type(model).__name__}")
    path = check_path(path, "path", kind="file", must_exist=False)
    ckpt = dict(format=FORMAT, config=model.config,
                state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
                settings=dict(settings or {}), meta=meta)
    return str(atomic_save(ckpt, path))


def load_mae(path, device="cpu", image_size=None, channels: Optional[int] = None
             ) -> Tuple[MaskedAutoencoder, dict, dict]:
    """Read a :func:`save_mae` file → ``(model in eval mode, settings, meta)``.

    ``image_size`` / ``channels``, when given, must match the model's (``ValueError`` naming the
    file and both sizes). Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming
    the file for anything that is not such a checkpoint (wrong format, damaged, NaN/Inf weights,
    weights of another shape). Shipped assets are checked against ``assets/SHA256SUMS``.
    """
    from .weights import check_finite, load_file, load_state_dict_checked, verify_asset
    p = check_path(path, "path", kind="file")
    device = check_device(device, "device")
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    image_size = check_input_size(image_size, "image_size")
    verify_asset(p)
    try:
        ckpt = load_file(p, "path")
    except ValueError as e:
        raise ValueError(f"{p}: not a masked-autoencoder checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{p}: not a masked-autoencoder checkpoint (expected format {FORMAT!r})")
    for key, kind in (("config", dict), ("state_dict", dict), ("settings", dict)):
        if not isinstance(ckpt.get(key), kind):
            raise ValueError(f"{p}: masked-autoencoder checkpoint without a valid {key!r} entry")
    cfg = ckpt["config"]
    saved = cfg.get("image_size")
    saved = tuple(saved) if isinstance(saved, (list, tuple)) else None
    if image_size is not None and saved and tuple(image_size) != saved:
        raise ValueError(f"{p}: this masked autoencoder was trained for {saved[0]}×{saved[1]} "
                         f"images, but {image_size[0]}×{image_size[1]} was requested; train one "
                         f"for this size (patchbench train pair)")
    if channels is not None and check_positive_int(channels, "channels") != cfg.get("channels"):
        raise ValueError(f"{p}: this masked autoencoder was trained for "
                         f"{cfg.get('channels')}-channel images, but {channels} channels were "
                         f"requested")
    check_finite(ckpt["state_dict"], p)
    try:
        model = MaskedAutoencoder(**cfg)
    except (TypeError, ValueError, LookupError) as e:
        raise ValueError(f"{p}: cannot rebuild the masked autoencoder from config {cfg!r}: "
                         f"{e}") from e
    load_state_dict_checked(model, ckpt["state_dict"], p,
                            f"a MaskedAutoencoder with config {cfg!r}")
    return model.to(device).eval(), dict(ckpt["settings"]), dict(ckpt.get("meta") or {})
