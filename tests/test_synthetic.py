"""Procedural data sets (glyphs, shapes) and zoos built on them, with the width sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from factorlens.errors import FactorlensError
from factorlens.research.synthetic import DOMAINS, make_images, synthetic_retest, synthetic_split
from factorlens.research.zoo import build_zoo, load_zoo, zoo_model, zoo_test_data


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_images_are_reproducible_balanced_and_in_range(domain: str) -> None:
    x, y = make_images(domain, 60, seed=3)
    c, h, w, names = DOMAINS[domain]
    assert x.shape == (60, c, h, w) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.bincount(y, minlength=len(names)).tolist() == [6] * len(names)
    x2, y2 = make_images(domain, 60, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = make_images(domain, 60, seed=4)
    assert not np.array_equal(x, x3)
    # every image holds structure, not a flat field
    assert (x.reshape(60, -1).std(axis=1) > 0.02).all()


def test_shapes_colours_do_not_give_the_class_away() -> None:
    """The mean colour of an image predicts its shape class barely above chance."""
    from sklearn.linear_model import LogisticRegression

    x, y = make_images("shapes", 1000, seed=0)
    colour = x.mean(axis=(2, 3))
    clf = LogisticRegression(max_iter=1000).fit(colour[:800], y[:800])
    assert clf.score(colour[800:], y[800:]) < 0.2


def test_the_test_split_does_not_depend_on_the_seed() -> None:
    a = synthetic_split("glyphs", seed=0, n_train=20, n_test=30)
    b = synthetic_split("glyphs", seed=1, n_train=20, n_test=30)
    assert not np.array_equal(a[0], b[0])
    assert np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3])


def test_the_retest_set_is_fixed_and_independent_of_the_test_set() -> None:
    _x, _y, x_test, _ = synthetic_split("glyphs", seed=0, n_train=5, n_test=30)
    x_re, y_re = synthetic_retest("glyphs", n_test=30)
    assert x_re.shape == x_test.shape and not np.array_equal(x_re, x_test)
    assert np.array_equal(synthetic_retest("glyphs", n_test=30)[0], x_re)
    assert np.bincount(y_re, minlength=10).tolist() == [3] * 10
    assert not x_re.flags.writeable


def test_unknown_domain_is_refused() -> None:
    with pytest.raises(FactorlensError, match="unknown synthetic domain 'shape'"):
        make_images("shape", 3, seed=0)


def test_colour_zoo_with_a_width_sweep(tmp_path: Path) -> None:
    target = build_zoo(
        "shapes", tmp_path / "z", arch="bngap", kinds="steps,width", quick=True, progress=False
    )
    entries = load_zoo(target)
    kinds = [e["kind"] for e in entries]
    assert kinds.count("width") == 2 and kinds.count("steps") == 3
    widths = {e["checkpoint"]: e["width"] for e in entries if e["kind"] == "width"}
    assert widths == {"width/width-04.pt": 4, "width/width-16.pt": 16}
    raw = json.loads(target.read_text())
    assert raw[-2]["arch_kwargs"] == {"in_channels": 3, "width": 4}
    narrow = zoo_model(entries[-2])
    assert narrow.features[0].out_channels == 4 and narrow.features[0].in_channels == 3
    test = zoo_test_data(entries[0])
    assert test.images.shape[1:] == (3, 32, 32) and test.labels is not None
    # the default-width model of the sweep is the last steps checkpoint, trained once
    same = [e for e in entries if e["checkpoint"] in ("steps/step-000030.pt", "width/width-16.pt")]
    assert same[0]["test_accuracy"] == same[1]["test_accuracy"]


def test_grayscale_only_architectures_refuse_colour(tmp_path: Path) -> None:
    with pytest.raises(FactorlensError, match="takes grayscale images but shapes has 3"):
        build_zoo("shapes", tmp_path / "z", arch="mnistcnn", quick=True, progress=False)


def test_the_test_sets_load_as_data_specs() -> None:
    from factorlens.data import load_data

    data = load_data("shapes")
    assert data.images.shape == (2000, 3, 32, 32) and data.class_names[0] == "disc"
    assert np.array_equal(data.images, synthetic_split("shapes")[2])
    with pytest.raises(FactorlensError, match="takes no argument"):
        load_data("glyphs:x")
