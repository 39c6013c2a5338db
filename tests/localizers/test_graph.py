import torch

from re2tal_cli.localizers.graph import knn_indices, neighbour_features


def test_knn_matches_sorting_every_pair_of_distances():
    torch.manual_seed(0)
    feats = torch.randn(2, 5, 11)
    found = knn_indices(feats, k=4)
    for b in range(2):
        for t in range(11):
            d = ((feats[b] - feats[b, :, t : t + 1]) ** 2).sum(0)
            d[t] = -1
            assert found[b, t].tolist() == d.argsort()[:4].tolist()


def test_padded_steps_are_nobodys_neighbour_and_short_sequences_fill_with_the_step_itself():
    torch.manual_seed(0)
    feats = torch.randn(1, 3, 8)
    mask = torch.tensor([[True] * 3 + [False] * 5])
    found = knn_indices(feats, k=5, mask=mask)
    for t in range(3):
        row = found[0, t].tolist()
        assert row[0] == t and set(row) <= {0, 1, 2} and row[3:] == [t, t]
    assert knn_indices(torch.randn(1, 2, 2), k=4).shape == (1, 2, 4)


def test_neighbour_features_gathers_per_step():
    feats = torch.arange(12.0).reshape(1, 2, 6)
    indices = torch.tensor([[[5, 0]] * 6])
    gathered = neighbour_features(feats, indices)
    assert gathered.shape == (1, 2, 6, 2)
    assert torch.equal(gathered[0, :, 3], feats[0][:, [5, 0]])
