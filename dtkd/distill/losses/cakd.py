"""Cross-architecture KD (Liu et al. 2022), the "CAKD" baseline, on video maps.

Liu, Cao, Li, Hu, Ding and Li 2022, "Cross-Architecture Knowledge Distillation" (ACCV 2022,
arXiv 2207.05273). A CNN student's map is carried into a transformer teacher's feature space by
two training-only projectors, each with an L2 loss: the *partially cross attention* (PCA)
projector (§3.2, Eq. 1-4) and the *group-wise linear* (GL) projector (§3.3, Eq. 5). Equation
numbers are the arXiv version's as we read it. Not implemented: the multi-view robust training
with its discriminator (§3.4).

Video reading, shared by both losses: a token is one (t, h, w) location of the *teacher's* grid
(N = T*H*W; the tap already drops MViT's class token). The student map is brought to that grid
first (``align_to_grid``: adaptive average pooling, replication where an axis is longer), because
the paper taps a student stage whose H*W equals the teacher's patch grid, which an X3D next to an
MViT does not have. Every loss computes in float32 and returns a scalar; the teacher is detached.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..features import align_to_grid, check_5d


def to_tokens(feat: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B, N, C) with N = T*H*W, in (t, h, w) raster order."""
    check_5d(feat, "to_tokens")
    return feat.flatten(2).transpose(1, 2)


def teacher_qkv(teacher_feat: Tensor) -> Tensor:
    """The stand-in for the teacher's Q_T = K_T = V_T: its tokens, layer-normalised, (B, N, D).

    Deviation: the paper reads Q, K and V of the teacher's own attention layer; dtkd's feature
    tap (and the teacher cache) holds only the block's output tokens h_T. A parameter-free
    LayerNorm over channels stands in for the norm a transformer block applies before its
    attention, so every token has norm sqrt(D) whatever the scale of the residual stream.
    """
    tok = to_tokens(teacher_feat.detach()).float()
    return F.layer_norm(tok, tok.shape[-1:])


def attention_relations(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """(softmax(Q K^T / sqrt(d)), V V^T / sqrt(d)), each (B, N, N), from (B, N, d) tokens.

    The two relations Eq. 2 compares: the attention map and the value relation (single head,
    d = the teacher's channel count).
    """
    if q.dim() != 3 or k.shape != q.shape or v.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"attention_relations: expected (B, N, d) Q and K and (B, N, d_v) V, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    with torch.autocast(q.device.type, enabled=False):  # float32 even inside a bf16/fp16 autocast region
        q, k, v = q.float(), k.float(), v.float()
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        rel = v @ v.transpose(1, 2) / math.sqrt(v.shape[-1])
    return attn, rel


def draw_replacement(batch: int, prob: float, device: torch.device | str = "cpu",
                     generator: torch.Generator | None = None) -> Tensor:
    """(B, 3) bool: which of (Q, K, V) of each clip is replaced by the teacher's (probability ``prob``)."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"replacement probability must be in [0, 1], got {prob}")
    return torch.rand((batch, 3), device=device, generator=generator) < prob


def pca_loss(
    q_s: Tensor,
    k_s: Tensor,
    v_s: Tensor,
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    replace_prob: float = 0.5,
    *,
    replace: Optional[Tensor] = None,
) -> Tensor:
    """L_PCA = mean (A_T - A'_S)^2 + mean (R_T - R'_S)^2 (Liu et al. 2022, Eq. 2 with Eq. 3-4).

    A = softmax(Q K^T / sqrt(d)) and R = V V^T / sqrt(d) (:func:`attention_relations`); the
    teacher's come from (Q_T, K_T, V_T), the student's from the *partially cross* matrices
    g(Q_S), g(K_S), g(V_S), where g(M_S) = M_T with probability ``replace_prob``, else M_S
    (Eq. 3-4: the teacher's matrices are mixed into the student's attention so that the
    projector learns inside the teacher's attention space and training is stabler). All
    arguments are (B, N, d) tokens; the teacher's are detached.
    Deviations: the paper's L2 norms are squared differences averaged over (B, N, N) here (one
    mean per relation); the replacement is drawn per clip and independently for Q, K and V (our
    reading of the paper's u ~ U(0, 1) against 0.5). ``replace`` (B, 3) bool, columns (Q, K, V),
    fixes the draw (tests, evaluation); otherwise it is drawn from torch's global RNG.
    """
    q_t, k_t, v_t = q_t.detach(), k_t.detach(), v_t.detach()
    for name, s, t in (("Q", q_s, q_t), ("K", k_s, k_t), ("V", v_s, v_t)):
        if s.dim() != 3 or s.shape != t.shape:
            raise ValueError(
                f"pca_loss: student and teacher {name} must both be (B, N, d) of one shape, got "
                f"{tuple(s.shape)} and {tuple(t.shape)}"
            )
    if replace is None:
        replace = draw_replacement(q_s.shape[0], replace_prob, q_s.device)
    if replace.shape != (q_s.shape[0], 3):
        raise ValueError(f"pca_loss: replace must be (B, 3) bool, got {tuple(replace.shape)}")
    replace = replace.to(device=q_s.device, dtype=torch.bool)[:, :, None, None]  # (B, 3, 1, 1)
    mixed = [torch.where(replace[:, i], t.float(), s.float()) for i, (s, t) in
             enumerate(((q_s, q_t), (k_s, k_t), (v_s, v_t)))]
    a_t, r_t = attention_relations(q_t, k_t, v_t)
    a_s, r_s = attention_relations(*mixed)
    return (a_s - a_t).square().mean() + (r_s - r_t).square().mean()


def group_index(length: int, groups: int) -> Tensor:
    """Block of each of ``length`` positions when an axis is cut into ``groups`` blocks of
    neighbours: floor(i * groups / length) (equal blocks when ``groups`` divides ``length``;
    one position per block, some blocks unused, when the axis is shorter than ``groups``)."""
    if length < 1 or groups < 1:
        raise ValueError(f"group_index: length and groups must be >= 1, got {length} and {groups}")
    return torch.arange(length) * groups // length


def gl_project(feat: Tensor, weight: Tensor, bias: Optional[Tensor], groups: Sequence[int]) -> Tensor:
    """The group-wise linear projector (Liu et al. 2022, §3.3): (B, C, T, H, W) -> (B, D, T, H, W).

    ``groups`` = (G_t, G_h, G_w) blocks of neighbouring locations; ``weight`` (G_t*G_h*G_w, C, D)
    holds one linear map per block and ``bias`` (G_t*G_h*G_w, D) its bias, blocks in (t, h, w)
    raster order; location (t, h, w) uses block (group_index(T, G_t)[t], group_index(H, G_h)[h],
    group_index(W, G_w)[w]). The paper shares one FC layer among each 2x2 group of neighbouring
    pixels of its 14x14 map; video reading: blocks of neighbours in (T, H, W), and a fixed number
    of blocks per axis instead of a fixed block size, so one projector serves any grid (equal to
    the paper's grouping when the counts divide the grid). Weights are kept 3-D (not 4-D/5-D) so
    that ``module.to(memory_format=channels_last_3d)`` leaves them alone.
    """
    check_5d(feat, "gl_project")
    gt, gh, gw = (int(g) for g in groups)
    b, c, t, h, w = feat.shape
    if weight.dim() != 3 or weight.shape[:2] != (gt * gh * gw, c):
        raise ValueError(
            f"gl_project: weight must be (G_t*G_h*G_w={gt * gh * gw}, C={c}, D), got {tuple(weight.shape)}"
        )
    d = weight.shape[2]
    # Block of every location, from shapes alone (on the CPU: the split sizes need no device sync).
    gid = ((group_index(t, gt)[:, None, None] * gh + group_index(h, gh)[None, :, None]) * gw
           + group_index(w, gw)[None, None, :]).flatten()
    order = torch.argsort(gid, stable=True)
    counts = torch.bincount(gid, minlength=gt * gh * gw).tolist()
    x = to_tokens(feat)[:, order.to(feat.device)]  # (B, N, C), locations sorted by block
    outs = []
    for g, chunk in enumerate(x.split(counts, dim=1)):
        if chunk.shape[1]:
            y = chunk @ weight[g]
            outs.append(y + bias[g] if bias is not None else y)
    y = torch.cat(outs, dim=1)[:, torch.argsort(order).to(feat.device)]  # back to raster order
    return y.transpose(1, 2).reshape(b, d, t, h, w)


def gl_loss(projected: Tensor, teacher_feat: Tensor) -> Tensor:
    """L_GL = mean (GL(h_S) - h_T)^2 (Liu et al. 2022, Eq. 5), both (B, D, T, H, W) on one grid.

    Deviation: the paper's L2 norm is a squared difference averaged over elements here. The
    teacher's tokens are the raw tapped map (no normalisation), detached.
    """
    check_5d(projected, "gl_loss(projected)")
    check_5d(teacher_feat, "gl_loss(teacher_feat)")
    if projected.shape != teacher_feat.shape:
        raise ValueError(
            f"gl_loss: projection {tuple(projected.shape)} and teacher {tuple(teacher_feat.shape)} differ"
        )
    return (projected.float() - teacher_feat.detach().float()).square().mean()


def cakd_loss(
    student_feat: Tensor,
    teacher_feat: Tensor,
    pca: Optional["PCAProjector3d"],
    gl: Optional["GLProjector3d"],
    replace_prob: float = 0.5,
    *,
    replace: Optional[Tensor] = None,
) -> dict[str, Tensor]:
    """{"pca": L_PCA, "gl": L_GL} of a student map against a teacher map (a projector that is None: no term).

    The student map (B, C, T, H, W) is first brought to the teacher's (T, H, W) grid
    (adaptive average pooling); the PCA projector's Q_S, K_S, V_S and the GL projection are
    computed there, against the teacher's tokens (:func:`teacher_qkv` for L_PCA, the raw map
    for L_GL). Channel counts may differ: both projectors output the teacher's D.
    """
    check_5d(student_feat, "cakd_loss(student_feat)")
    check_5d(teacher_feat, "cakd_loss(teacher_feat)")
    s = align_to_grid(student_feat, teacher_feat.shape[2:])
    out: dict[str, Tensor] = {}
    if pca is not None:
        q_s, k_s, v_s = pca(s)
        qkv_t = teacher_qkv(teacher_feat)
        out["pca"] = pca_loss(q_s, k_s, v_s, qkv_t, qkv_t, qkv_t, replace_prob, replace=replace)
    if gl is not None:
        out["gl"] = gl_loss(gl(s), teacher_feat)
    return out


class PCAProjector3d(nn.Module):
    """The PCA projector's Q_S, K_S, V_S (Eq. 1): three k^3 convolutions C -> D (the paper's 3x3, in 3-D)."""

    def __init__(self, student_channels: int, teacher_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"PCA projector kernel must be odd and >= 1 (grid kept), got {kernel_size}")
        pad = kernel_size // 2
        self.q = nn.Conv3d(student_channels, teacher_channels, kernel_size, padding=pad)
        self.k = nn.Conv3d(student_channels, teacher_channels, kernel_size, padding=pad)
        self.v = nn.Conv3d(student_channels, teacher_channels, kernel_size, padding=pad)

    def forward(self, feat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, C, T, H, W) -> (Q_S, K_S, V_S), each (B, N, D) tokens."""
        return to_tokens(self.q(feat)), to_tokens(self.k(feat)), to_tokens(self.v(feat))


class GLProjector3d(nn.Module):
    """The GL projector: one C -> D linear map (and bias) per (T, H, W) block of tokens (:func:`gl_project`)."""

    def __init__(self, student_channels: int, teacher_channels: int, groups: Sequence[int] = (4, 4, 4)) -> None:
        super().__init__()
        groups = tuple(int(g) for g in groups)
        if len(groups) != 3 or min(groups) < 1:
            raise ValueError(f"GL projector groups must be three positive block counts (T, H, W), got {groups}")
        self.groups = groups
        n = math.prod(groups)
        bound = 1.0 / math.sqrt(student_channels)  # nn.Linear's default range, per block
        self.weight = nn.Parameter(torch.empty(n, student_channels, teacher_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, teacher_channels).uniform_(-bound, bound))

    def forward(self, feat: Tensor) -> Tensor:
        return gl_project(feat, self.weight, self.bias, self.groups)


class CAKDLoss(nn.Module):
    """CAKD's trainable parts (PCA and GL projectors); training-only, never exported.

    ``use_pca`` / ``use_gl`` False: that projector is not built and its term not computed. The
    partially cross replacement happens in training mode only; in eval mode the student's own
    Q, K, V are used (deterministic), as at the end of training nothing is replaced.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        replace_prob: float = 0.5,
        kernel_size: int = 3,
        groups: Sequence[int] = (4, 4, 4),
        *,
        use_pca: bool = True,
        use_gl: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= replace_prob <= 1.0:
            raise ValueError(f"replacement probability must be in [0, 1], got {replace_prob}")
        if not (use_pca or use_gl):
            raise ValueError("CAKDLoss needs at least one of the PCA and GL projectors")
        self.replace_prob = replace_prob
        self.pca = PCAProjector3d(student_channels, teacher_channels, kernel_size) if use_pca else None
        self.gl = GLProjector3d(student_channels, teacher_channels, groups) if use_gl else None

    def forward(
        self, student_feat: Tensor, teacher_feat: Tensor, replace: Optional[Tensor] = None
    ) -> dict[str, Tensor]:
        if replace is None and not self.training:
            replace = torch.zeros((student_feat.shape[0], 3), dtype=torch.bool, device=student_feat.device)
        return cakd_loss(student_feat, teacher_feat, self.pca, self.gl, self.replace_prob, replace=replace)
