"""Residual-quantised VAE (RQ-VAE): MLP encoder, L residual codebooks, mirrored MLP decoder.

Written once; plain (TIGER), Sinkhorn-trained (MQL4GRec, LC-Rec) and cross-modal (MACRec)
pre-stages all use this class.
"""
import torch
import torch.nn.functional as F
from torch import nn

from recbole_macrec.quantization.kmeans import kmeans


def mlp(dims, dropout=0.0):
    """Linear layers over ``dims`` with ReLU between them and nothing after the last; weights
    xavier-normal and biases zero, as the released MACRec / MQL4GRec / LC-Rec RQ-VAEs do."""
    layers = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        linear = nn.Linear(d_in, d_out)
        nn.init.xavier_normal_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@torch.no_grad()
def sinkhorn(distances, epsilon, iters):
    """Balanced assignment weights ``[n, m]`` for squared distances ``[n, m]``, computed as the
    released RQ-VAEs do: distances centred and scaled into [-1, 1], ``exp(-d / epsilon)`` in
    float64, then ``iters`` rounds of (rows to 1/n, columns to 1/m). ``argmax`` per row is the code."""
    d = distances.double()
    middle = (d.max() + d.min()) / 2
    amplitude = d.max() - middle + 1e-5
    q = torch.exp(-((d - middle) / amplitude) / epsilon)
    q = q / q.sum()
    n, m = q.shape
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / n
        q = q / q.sum(dim=0, keepdim=True) / m
    return q * n


def squared_distances(x, book):
    """``[B, M]`` squared Euclidean distances of rows ``x [B, d]`` to codewords ``book [M, d]``."""
    return x.pow(2).sum(1, keepdim=True) - 2 * x @ book.t() + book.pow(2).sum(1)[None, :]


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

    @torch.no_grad()
    def kmeans_init(self, z, seed, niter):
        """Initialise each codebook with k-means (``niter`` iterations) on the residuals entering
        its level."""
        residual = z
        for book in self.codebooks:
            centroids, _ = kmeans(residual.cpu().numpy(), book.shape[0], seed=seed, niter=niter)
            book.data.copy_(torch.from_numpy(centroids).to(book))
            residual = residual - book[squared_distances(residual, book).argmin(dim=1)]

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

    def assign(self, residual, level, balanced):
        """Codes ``[B]`` and squared distances ``[B, M]`` of ``residual`` at ``level``; Sinkhorn
        on this level's ``sinkhorn_levels`` when ``balanced``, else the nearest codeword."""
        dist = squared_distances(residual, self.codebooks[level])
        if balanced and level in self.sinkhorn_levels:
            codes = sinkhorn(dist.detach(), self.sinkhorn_epsilon, self.sinkhorn_iters).argmax(dim=1)
        else:
            codes = dist.argmin(dim=1)
        return codes, dist

    def forward(self, z, balanced=True):
        """Quantise ``z [B, d]``. Returns a dict:

        - ``quantized [B, d]``: straight-through (value: the sum of the chosen codewords; gradient:
          to ``z`` only), what the decoder reads;
        - ``codes [B, L]``, ``distances [L, B, M]`` (detached) and ``vq_loss`` (mean over levels);
        - ``residuals [L, B, d]``: the input of each level along the straight-through path, as the
          released code computes it. For every level >= 1 it carries no gradient at all
          (``r_{l+1} = -sg(e_l - r_l)``);
        - ``residuals_grad [L, B, d]``: the same values along ``r_{l+1} = r_l - e_{c_l}`` with the
          chosen codewords' gradient, so a loss on level ``l`` reaches the encoder and the
          codebooks of levels ``< l`` (the paper's per-level residuals);
        - ``codeword_sum [B, d]``: the sum of the chosen codewords, with their gradient.

        ``balanced=False`` assigns by nearest codeword on every level (code extraction)."""
        residual, residual_grad = z, z
        quantized, codeword_sum = torch.zeros_like(z), torch.zeros_like(z)
        codes, residuals, residuals_grad, dists, vq_losses = [], [], [], [], []
        for level, book in enumerate(self.codebooks):
            residuals.append(residual)
            residuals_grad.append(residual_grad)
            code, dist = self.assign(residual, level, balanced)
            chosen = book[code]
            vq_losses.append(F.mse_loss(chosen, residual.detach())
                             + self.beta * F.mse_loss(residual, chosen.detach()))
            # Straight-through per level, as the released RQ-VAEs do: only level 0 passes
            # reconstruction gradients to z and the deeper commitment terms do not pull z.
            chosen_st = residual + (chosen - residual).detach()
            quantized = quantized + chosen_st
            residual = residual - chosen_st
            residual_grad = residual_grad - chosen
            codeword_sum = codeword_sum + chosen
            codes.append(code)
            dists.append(dist.detach())
        return {"quantized": quantized, "codes": torch.stack(codes, dim=1),
                "residuals": torch.stack(residuals), "residuals_grad": torch.stack(residuals_grad),
                "codeword_sum": codeword_sum, "distances": torch.stack(dists),
                "vq_loss": torch.stack(vq_losses).mean()}


class RQVAE(nn.Module):
    """One view's RQ-VAE: ``x [B, in_dim]`` -> ``z [B, e_dim]`` -> L codes -> reconstruction.

    ``projection_dim > 0`` puts a Linear(in_dim -> projection_dim) with no activation after it in
    front of the encoder MLP (and its mirror after the decoder), as the released MACRec
    cross-modal RQ-VAE does (its "align" encoder/decoder of width 768)."""

    def __init__(self, in_dim, hidden_layers, e_dim, num_levels, codebook_size, beta=0.25,
                 dropout=0.0, projection_dim=0, sinkhorn_levels=(), sinkhorn_epsilon=0.003,
                 sinkhorn_iters=50):
        super().__init__()
        width = projection_dim or in_dim
        dims = [width, *hidden_layers, e_dim]
        encoder, decoder = [mlp(dims, dropout)], [mlp(dims[::-1], dropout)]
        if projection_dim:
            encoder.insert(0, mlp([in_dim, projection_dim], dropout))
            decoder.append(mlp([projection_dim, in_dim], dropout))
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)
        self.quantizer = ResidualQuantizer(num_levels, codebook_size, e_dim, beta, sinkhorn_levels,
                                           sinkhorn_epsilon, sinkhorn_iters)

    def forward(self, x):
        z = self.encoder(x)
        out = self.quantizer(z)
        out["z"] = z
        out["recon_loss"] = F.mse_loss(self.decoder(out["quantized"]), x)
        return out
