import numpy as np

from prn_data.resize import ResizePolicy, nearest_indices, resize_labels


def test_policy_sizes():
    p = ResizePolicy()
    assert p.output_size(427, 640) == (534, 800)  # longer side capped: 800/640 * 427 = 533.75 → 534
    assert p.output_size(1024, 2048) == (400, 800)
    assert p.output_size(700, 700) == (640, 640)
    assert p.output_size(800, 600) == (800, 600)  # portrait: shorter 640 would make 853 > 800
    assert ResizePolicy(short=0).output_size(5, 7) == (5, 7)


def test_nearest_exact_indices_match_integer_formula():
    # 5 → 2: centres at 1.25, 3.75 → floor → 1, 3
    assert nearest_indices(5, 2).tolist() == [1, 3]
    # upsampling 2 → 5: (2i+1)*2//10 = 0,0,1,1,1
    assert nearest_indices(2, 5).tolist() == [0, 0, 1, 1, 1]
    lab = np.arange(20).reshape(4, 5)
    out = resize_labels(lab, (2, 2))
    assert out.tolist() == [[lab[1, 1], lab[1, 3]], [lab[3, 1], lab[3, 3]]]
