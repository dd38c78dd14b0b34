"""Residual-quantised VAE (RQ-VAE): MLP encoder, L residual codebooks, mirrored MLP decoder.

Written once; plain (TIGER/MQL4GRec), cross-modal (MACRec) and Sinkhorn-balanced (LC-Rec)
pre-stages all use this class.
"""
import torch
import torch.nn.functional as F
from torch import nn

from recbole_macrec.quantization.kmeans import kmeans


def mlp(dims, dropout=0.0):
    """Linear layers over ``dims`` with ReLU between them and nothing after the last."""
    layers = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@torch.no_grad()
def sinkhorn(cost, epsilon, iters):
    """Balanced soft assignment ``[n, m]`` for a cost matrix ``[n, m]`` (Sinkhorn-Knopp)."""
    cost = cost.double()
    q = torch.exp(-(cost - cost.min()) / (epsilon * (cost.max() - cost.min()).clamp_min(1e-12)))
    n, m = q.shape
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(dim=0, keepdim=True).clamp_min(1e-300) / m
        q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-300) / n
    return q.float()


class ResidualQuantizer(nn.Module):
    """L codebooks ``[M, e_dim]``; quantises a batch ``[B, e_dim]`` level by level."""

    def __init__(self, num_levels, codebook_size, e_dim, beta=0.25, sinkhorn_levels=(),
                 sinkhorn_epsilon=0.003, sinkhorn_iters=50):
        super().__init__()
        self.codebooks = nn.ParameterList(
            [nn.Parameter(torch.randn(codebook_size, e_dim) * 0.01) for _ in range(num_levels)]
        )
        self.beta = beta
        self.sinkhorn_levels = set(sinkhorn_levels)
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iters = sinkhorn_iters

    @property
    def num_levels(self):
        return len(self.codebooks)

    @torch.no_grad()
    def kmeans_init(self, z, seed):
        """Initialise each codebook with k-means on the residuals entering its level."""
        residual = z
        for book in self.codebooks:
            centroids, _ = kmeans(residual.cpu().numpy(), book.shape[0], seed=seed)
            book.data.copy_(torch.from_numpy(centroids).to(book))
            residual = residual - book[torch.cdist(residual, book).argmin(dim=1)]

    @torch.no_grad()
    def restart_dead_codes(self, residuals, codes, generator, optimizer=None):
        """Move every codeword that no item uses (``codes [N, L]``, all items) onto the residual
        entering its level (``residuals [L, N, d]``) of a random item, and clear its optimiser
        moments. Without this a codeword that k-means placed where the encoder's outputs no longer
        go stays unused for good, and a level can collapse onto a few codes. Returns the number of
        codewords moved per level."""
        moved = []
        for level, book in enumerate(self.codebooks):
            used = torch.zeros(book.shape[0], dtype=torch.bool, device=book.device)
            used[codes[:, level]] = True
            dead = (~used).nonzero().flatten()
            if len(dead):
                pick = torch.randint(0, residuals.shape[1], (len(dead),), generator=generator,
                                     device=generator.device).to(book.device)
                book.data[dead] = residuals[level, pick].to(book.dtype)
                state = optimizer.state.get(book, {}) if optimizer is not None else {}
                for moment in ("exp_avg", "exp_avg_sq"):
                    if moment in state:
                        state[moment][dead] = 0
            moved.append(len(dead))
        return moved

    def assign(self, residual, level, balanced=None):
        """Codes ``[B]`` and squared distances ``[B, M]`` of ``residual`` at ``level``."""
        book = self.codebooks[level]
        dist = (residual.pow(2).sum(1, keepdim=True) - 2 * residual @ book.t()
                + book.pow(2).sum(1)[None, :])
        use_sk = level in self.sinkhorn_levels if balanced is None else balanced
        if use_sk:
            codes = sinkhorn(dist.detach(), self.sinkhorn_epsilon, self.sinkhorn_iters).argmax(dim=1)
        else:
            codes = dist.argmin(dim=1)
        return codes, dist

    def forward(self, z):
        """Returns quantised ``[B, d]`` (straight-through), codes ``[B, L]``, residuals
        ``[L, B, d]`` (the input of each level), distances ``[L, B, M]`` and the VQ loss."""
        residual, quantized = z, torch.zeros_like(z)
        codes, residuals, dists, vq_losses = [], [], [], []
        for level, book in enumerate(self.codebooks):
            residuals.append(residual)
            code, dist = self.assign(residual, level)
            chosen = book[code]
            vq_losses.append(F.mse_loss(chosen, residual.detach())
                             + self.beta * F.mse_loss(residual, chosen.detach()))
            # Straight-through per level, as the released RQ-VAEs do: the next residual is
            # residual - chosen_st, so only level 0 passes reconstruction gradients to z and the
            # deeper commitment terms do not pull z.
            chosen_st = residual + (chosen - residual).detach()
            quantized = quantized + chosen_st
            residual = residual - chosen_st
            codes.append(code)
            dists.append(dist.detach())
        return (quantized, torch.stack(codes, dim=1), torch.stack(residuals), torch.stack(dists),
                torch.stack(vq_losses).mean())


class RQVAE(nn.Module):
    """One view's RQ-VAE: ``x [B, in_dim]`` -> ``z [B, e_dim]`` -> L codes -> reconstruction."""

    def __init__(self, in_dim, hidden_layers, e_dim, num_levels, codebook_size, beta=0.25,
                 dropout=0.0, sinkhorn_levels=(), sinkhorn_epsilon=0.003, sinkhorn_iters=50):
        super().__init__()
        dims = [in_dim, *hidden_layers, e_dim]
        self.encoder = mlp(dims, dropout)
        self.decoder = mlp(dims[::-1], dropout)
        self.quantizer = ResidualQuantizer(num_levels, codebook_size, e_dim, beta, sinkhorn_levels,
                                           sinkhorn_epsilon, sinkhorn_iters)

    def forward(self, x):
        z = self.encoder(x)
        quantized, codes, residuals, dists, vq_loss = self.quantizer(z)
        recon = self.decoder(quantized)
        return {"z": z, "quantized": quantized, "codes": codes, "residuals": residuals,
                "distances": dists, "vq_loss": vq_loss, "recon_loss": F.mse_loss(recon, x)}
