import pytest
import torch

from re2tal_cli.localizers.blocks import (
    MaskedConv1d,
    TransformerBlock,
    global_attention,
    masked,
    windowed_attention,
)


def _dense_reference(q, k, v, key_mask, radius):
    t = q.shape[2]
    scores = q @ k.transpose(-1, -2)  # (B, H, T, T)
    steps = torch.arange(t)
    allowed = key_mask[:, None, None, :].clone().expand(-1, 1, t, t)
    if radius is not None:
        allowed = allowed & ((steps[:, None] - steps[None, :]).abs() <= radius)
    # -1e30, not -inf: a row without any valid key stays finite (and is left out of the comparisons)
    return scores.masked_fill(~allowed, -1e30).softmax(-1) @ v, allowed.any(-1)


@pytest.mark.parametrize(("length", "radius"), [(23, 1), (23, 2), (40, 9), (7, 9), (16, 4)])
def test_windowed_attention_equals_banded_dense_attention(length, radius):
    q, k, v = torch.randn(3, 2, 3, length, 4, dtype=torch.float64).unbind(0)
    key_mask = torch.rand(2, length) > 0.3
    key_mask[1, length // 2 :] = False  # a padded tail
    out = windowed_attention(q, k, v, key_mask, radius)
    expected, has_key = _dense_reference(q, k, v, key_mask, radius)
    rows = has_key[:, :, :, None].expand_as(out)
    torch.testing.assert_close(out[rows], expected[rows], rtol=0, atol=1e-12)
    assert torch.isfinite(out).all()


def test_windowed_attention_gradients_equal_dense_ones():
    q, k, v = torch.randn(3, 1, 2, 19, 4, dtype=torch.float64, requires_grad=True).unbind(0)
    key_mask = torch.arange(19)[None] < 15
    weights = torch.randn(1, 2, 19, 4, dtype=torch.float64)
    weights[:, :, 18] = 0  # step 18 reaches no valid key: its output is discarded in the model, as here
    grads = torch.autograd.grad((windowed_attention(q, k, v, key_mask, 3) * weights).sum(), (q, k, v))
    dense, _ = _dense_reference(q, k, v, key_mask, 3)
    expected = torch.autograd.grad((dense * weights).sum(), (q, k, v))
    for grad, reference in zip(grads, expected, strict=True):
        torch.testing.assert_close(grad, reference, rtol=0, atol=1e-12)


def test_global_attention_equals_dense_attention():
    q, k, v = torch.randn(3, 2, 2, 11, 4, dtype=torch.float64).unbind(0)
    key_mask = torch.arange(11)[None] < torch.tensor([[11], [6]])
    expected, _ = _dense_reference(q, k, v, key_mask, None)
    torch.testing.assert_close(global_attention(q, k, v, key_mask), expected)
    nothing_valid = global_attention(q, k, v, torch.zeros(2, 11, dtype=torch.bool))
    assert torch.isfinite(nothing_valid).all()


def test_masked_conv_reads_no_padded_step():
    conv = MaskedConv1d(3, 5, 3, stride=2)
    x = torch.randn(1, 3, 8)
    mask = torch.arange(8)[None] < 5
    out, out_mask = conv(x, mask)
    assert out_mask.tolist() == [[True, True, True, False]]  # input steps 0, 2, 4 valid; 6 not
    garbage = x.clone()
    garbage[..., 5:] = 1e6
    torch.testing.assert_close(conv(garbage, mask)[0], out)
    assert out[..., 3].abs().sum() == 0


@pytest.mark.parametrize(("stride", "window"), [(1, 5), (2, 5), (2, -1)])
def test_transformer_block_ignores_padding_and_zeroes_it(stride, window):
    block = TransformerBlock(8, 2, window, stride=stride, layer_scale_init=1e-4).eval()
    with torch.no_grad():
        block.scale1.scale.fill_(1.0)  # make the attention branch count
        block.scale2.scale.fill_(1.0)
    mask = torch.arange(16)[None] < 10
    x = masked(torch.randn(1, 8, 16), mask)
    out, out_mask = block(x, mask)
    assert out.shape == (1, 8, 16 // stride) and torch.equal(out_mask, mask[:, ::stride])
    assert out[..., ~out_mask[0]].abs().sum() == 0
    short, _ = block(x[..., :10], mask[:, :10])  # the same valid steps, no padding at all
    valid = short.shape[-1]
    torch.testing.assert_close(out[..., :valid], short, rtol=0, atol=1e-6)
