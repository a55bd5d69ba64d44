"""Conditioning pieces of the diffusion model: SLERP, the projection and its null token, dihedral flips, the space."""

import pytest
import torch
import torch.nn.functional as F

from pathgen.diffusion import space
from pathgen.diffusion.conditioning import EmbeddingProjection, slerp
from pathgen.diffusion.data import dihedral


def test_slerp_ends_are_the_normalised_inputs_and_every_point_is_on_the_sphere():
    g = torch.Generator().manual_seed(0)
    e1, e2 = 3 * torch.randn(5, 64, generator=g), 0.5 * torch.randn(5, 64, generator=g)
    torch.testing.assert_close(slerp(e1, e2, 1.0), F.normalize(e1, dim=-1))
    torch.testing.assert_close(slerp(e1, e2, 0.0), F.normalize(e2, dim=-1))
    for alpha in (0.25, 0.5, 0.7):
        torch.testing.assert_close(slerp(e1, e2, alpha).norm(dim=-1), torch.ones(5))
    mid = slerp(e1, e2, 0.5)  # the midpoint is equally far from both ends, unlike... the linear mix's norm < 1
    a, b = F.normalize(e1, dim=-1), F.normalize(e2, dim=-1)
    torch.testing.assert_close((mid * a).sum(-1), (mid * b).sum(-1))
    assert ((a + b) / 2).norm(dim=-1).max() < 0.99
    # the weight alpha is on e1: the angle to e1 shrinks as alpha grows
    cos_to_e1 = [(slerp(e1, e2, x) * a).sum(-1).mean().item() for x in (0.2, 0.5, 0.8)]
    assert cos_to_e1 == sorted(cos_to_e1)


def test_slerp_of_near_parallel_inputs_is_the_linear_mix_without_nan():
    e1 = torch.tensor([[1.0, 0.0, 0.0]])
    e2 = torch.tensor([[1.0, 1e-5, 0.0]])
    for x in (e2, e1.clone()):  # near-parallel and exactly parallel
        out = slerp(e1, x, 0.3)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, 0.3 * e1 + 0.7 * F.normalize(x, dim=-1))
    # per-row alphas
    out = slerp(torch.randn(4, 8), torch.randn(4, 8), torch.tensor([0.0, 0.3, 0.6, 1.0]))
    assert out.shape == (4, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("mode, shape", [("cross_attention", (3, 1, 16)), ("timestep", (3, 16))])
def test_projection_normalises_and_the_dropped_rows_get_the_null_token(mode, shape):
    torch.manual_seed(0)
    proj = EmbeddingProjection(8, 16, mode=mode, null="learned")
    e = torch.randn(3, 8)
    out = proj(e)
    assert out.shape == shape
    torch.testing.assert_close(proj(5 * e), out)  # the embedding's scale does not matter: it is L2-normalised
    with torch.no_grad():
        proj.null_token.fill_(0.5)
    dropped = proj(e, drop=torch.tensor([True, False, True])).reshape(3, 16)
    torch.testing.assert_close(dropped[0], torch.full((16,), 0.5))
    torch.testing.assert_close(dropped[1], out.reshape(3, 16)[1])
    torch.testing.assert_close(proj.null_condition(3).reshape(3, 16), torch.full((3, 16), 0.5))
    assert not EmbeddingProjection(8, 16, null="zeros").null_token.requires_grad  # zeros stay zeros


def test_dihedral_flips_give_the_8_distinct_symmetries_and_keep_pixels():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    outs = [dihedral(x[:1], torch.tensor([k])) for k in range(8)]
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 8
    for o in outs:
        assert sorted(o.flatten().tolist()) == sorted(x[:1].flatten().tolist())
    both = dihedral(x, torch.tensor([0, 5]))  # per-item transforms in one batch
    torch.testing.assert_close(both[0], x[0])
    torch.testing.assert_close(both[1], torch.rot90(x[1].flip(-1), 1, dims=(-2, -1)))


def test_patched_pixel_space_round_trips_exactly():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = space.encode(x, None, patch_size=4)
    assert z.shape == (2, 48, 4, 4)
    torch.testing.assert_close(space.decode(z, None, patch_size=4), x)
    assert space.channels_and_size(64, None, 4) == (48, 16)
