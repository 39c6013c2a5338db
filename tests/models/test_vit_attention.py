"""ViT's attention recomputed a group of heads at a time in the reversible backward."""

from dataclasses import replace

import pytest
import torch

from re2tal_cli.models import get_arch
from re2tal_cli.models.vit import AttentionBlock
from re2tal_cli.reversible import Coupling
from re2tal_cli.reversible.check import check_reversibility


def counted_summands(monkeypatch) -> list[tuple[int, int]]:
    calls = []
    original = AttentionBlock.summand

    def summand(self, x, index, count, **take):
        calls.append((index, count))
        return original(self, x, index, count, **take)

    monkeypatch.setattr(AttentionBlock, "summand", summand)
    return calls


@pytest.mark.usefixtures("pieces_at_any_size")
@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["drop-path", "drop-path+dropout"])
@pytest.mark.parametrize("arch", ["vit-tiny", "vit-tiny-d3"])
def test_attention_recomputed_a_head_group_at_a_time_gives_autograds_gradients(arch, dropout, monkeypatch):
    calls = counted_summands(monkeypatch)
    model = get_arch(arch).create(num_classes=3, drop_path=0.2, dropout=dropout).double()
    video = torch.randn(2, 3, 8, 32, 32, dtype=torch.float64)
    for coupling in (Coupling(0.0, 1.0), Coupling(0.5, 0.5)):
        report = check_reversibility(model, video, coupling)
        assert report.gradient_error_level < 1e-10 and report.fallbacks == 0, report
    layers = len(model.blocks)
    assert sorted(calls) == sorted([(0, 2), (1, 2)] * layers * 2)  # both heads' groups, every layer, both couplings


@pytest.mark.usefixtures("pieces_at_any_size")
def test_head_groups_add_up_to_the_attention_block_and_divide_the_heads():
    torch.manual_seed(0)
    config = get_arch("vit-s").config
    block = AttentionBlock(config, drop_path=0.0).double().eval()
    x = torch.randn(1, 10, config.dim, dtype=torch.float64)
    groups = block.summands(x)
    assert groups == 3  # four pieces asked, the largest divisor of 6 heads up to 4
    assert torch.allclose(sum(block.summand(x, k, groups) for k in range(groups)), block(x), atol=1e-12)


@pytest.mark.usefixtures("pieces_at_any_size")
def test_attention_dropout_or_a_small_input_recomputes_the_attention_whole(monkeypatch):
    from re2tal_cli.reversible import pieces

    config = get_arch("vit-tiny").config
    x = torch.randn(1, 10, config.dim)
    assert AttentionBlock(config, 0.0).train().summands(x) == 2
    assert AttentionBlock(replace(config, attn_dropout=0.1), 0.0).train().summands(x) == 1
    monkeypatch.setattr(pieces, "MIN_SPLIT_BYTES", x.numel() * x.element_size() + 1)
    assert AttentionBlock(config, 0.0).train().summands(x) == 1


def test_the_position_table_made_in_blocks_is_videomaes(monkeypatch):
    """VideoMAE's table: float64 sinusoids rounded to float32, the same bits whatever the block of rows."""
    from re2tal_cli.models import vit

    model = get_arch("vit-tiny").create()
    n, d = 37, model.cfg.dim
    position = torch.arange(n, dtype=torch.float64)[:, None]
    angle = position / torch.pow(10000.0, 2 * (torch.arange(d) // 2).to(torch.float64) / d)
    expected = torch.where(torch.arange(d) % 2 == 0, torch.sin(angle), torch.cos(angle)).to(torch.float32)
    monkeypatch.setattr(vit, "POSITION_ROWS", 8)  # 37 rows: four whole blocks and a short one
    assert torch.equal(model._positions(n, torch.device("cpu"), torch.float32), expected)
