"""``bench/tiles.py``'s FLOP counter against hand counts (dilated valid convolutions, the paper CNN)."""
import importlib.util
import os

from conftest import REPO


def _tiles():
    spec = importlib.util.spec_from_file_location("bench_tiles", os.path.join(REPO, "bench", "tiles.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_density_flops_dilated_valid():
    from ednn_tf import networks

    count = _tiles().conv_net_flops
    # c = 3: dilations (1, 2); 4 filters, 1 channel; on an 11 x 11 input (a 5 x 5 image padded by 3):
    # conv1 3x3 d1 -> 9 x 9, conv2 3x3 d2 -> 5 x 5, 1x1 -> 5 x 5
    net = networks.energy_density(3, channels=1, filters=4, seed=0)
    assert networks.density_dilations(3) == (1, 2)
    hand = 2 * 81 * 9 * 1 * 4 + 2 * 25 * 9 * 4 * 4 + 2 * 25 * 1 * 4 * 1
    assert count(net, (11, 11, 1)) == hand == 13232


def test_paper_cnn_flops_sized_equals_built():
    from ednn_tf import networks

    count = _tiles().conv_net_flops
    net = networks.paper_cnn(33, 3, width=0.25, dense=256, seed=0)
    assert count(net, (33, 33, 3)) == count(net)
    # width 0.25: filters 16 (s2), 16 (s2), 4 x 6 (4x4), 16 (s2), 8 x 4; 'same' padding: 33 -> 17 -> 9 -> 9 -> 5
    hand = (2 * 17 * 17 * 9 * 3 * 16 + 2 * 9 * 9 * 9 * 16 * 16            # conv1, conv2
            + 2 * 81 * 16 * 16 * 4 + 5 * 2 * 81 * 16 * 4 * 4             # conv3, conv4-8
            + 2 * 25 * 9 * 4 * 16 + 2 * 25 * 9 * 16 * 8 + 3 * 2 * 25 * 9 * 8 * 8   # conv9, conv10, conv11-13
            + 2 * 200 * 256 + 2 * 256)                                    # dense 5*5*8 -> 256 -> 1
    assert count(net) == hand == 1271904
