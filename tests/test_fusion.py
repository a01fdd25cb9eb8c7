"""Fusion: the authors' rule on hand-made rows, pooling, abstention, score files, weight search, ``fuse`` CLI."""
from __future__ import annotations

import csv
import math
import re

import numpy as np
import pytest

from groupmood.cli import main
from groupmood.errors import ConfigError, DatasetError
from groupmood.fusion import (ABSTAIN, PRESETS, Pooled, align_tables, fuse, fuse_rows, match_labels, parse_pooling,
                              parse_weights, pool, preset_weights, read_labels, read_scores, search_weights,
                              simplex_grid, to_probabilities, write_scores)
from groupmood.labels import GROUP_CLASSES

W = {"aligned": 3.0, "global": 0.5, "nonaligned": 0.5}


def _softmax(x):
    e = np.exp(np.asarray(x, float) - max(x))
    return e / e.sum()


# --------------------------------------------------------------------------- the authors' rule

def test_score_columns_are_negative_neutral_positive(tmp_path):
    """The authors' files give scores as Negative, Neutral, Positive; a CSV is read by its header names."""
    authors = tmp_path / "authors.txt"
    authors.write_text("neg.jpg 0.7 0.2 0.1\nneu.jpg 0.2 0.7 0.1\npos.jpg 0.1 0.2 0.7\n")
    t = read_scores(authors)
    _, idx = fuse_rows({"a": t.scores}, {"a": 1.0})
    assert [GROUP_CLASSES[i] for i in idx] == ["Negative", "Neutral", "Positive"]
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("name,Positive,Negative,Neutral\npos.jpg,0.7,0.1,0.2\n")
    np.testing.assert_allclose(read_scores(shuffled).scores, [[0.1, 0.2, 0.7]])
    out = write_scores(tmp_path / "ours.csv", ["x.jpg"], np.array([[0.1, 0.2, 0.7]]))
    assert out.read_text().splitlines()[0] == "name,Negative,Neutral,Positive"


def test_to_probabilities_softmaxes_only_rows_not_summing_to_one():
    rows = np.array([[0.2, 0.3, 0.5],        # probabilities: kept
                     [0.3, 0.3, 0.405],      # sums to 1.005, within 0.01: kept
                     [0.3, 0.3, 0.42],       # sums to 1.02: softmaxed
                     [2.0, 0.5, -1.0],       # logits: softmaxed
                     [2.0, 0.0, -1.0]])      # logits that happen to sum to 1: kept, as the authors' rule does
    out = to_probabilities(rows)
    np.testing.assert_allclose(out[0], rows[0])
    np.testing.assert_allclose(out[1], rows[1])
    np.testing.assert_allclose(out[2], _softmax(rows[2]))
    np.testing.assert_allclose(out[3], _softmax(rows[3]))
    np.testing.assert_allclose(out[4], rows[4])
    np.testing.assert_allclose(to_probabilities([2.0, 0.5, -1.0]), _softmax([2.0, 0.5, -1.0]))


def test_authors_rule_by_hand():
    aligned = np.array([[0.2, 0.3, 0.5]])       # a probability row
    glob = np.array([[2.0, 0.5, -1.0]])          # a logit row -> softmax (0.786, 0.175, 0.039)
    nonaligned = np.array([[0.1, 0.1, 0.1]])     # sums to 0.3 -> softmax -> uniform
    sm = _softmax([2.0, 0.5, -1.0])
    summed = 3.0 * aligned[0] + 0.5 * sm + 0.5 * np.full(3, 1 / 3)
    assert np.argmax(summed) == 2  # Positive with the authors' weights
    probs, idx = fuse_rows({"aligned": aligned, "global": glob, "nonaligned": nonaligned}, W)
    np.testing.assert_allclose(probs[0], summed / 4.0)
    assert idx.tolist() == [2] and GROUP_CLASSES[idx[0]] == "Positive"
    equal = aligned[0] + sm + 1 / 3
    assert np.argmax(equal) == 0
    _, idx = fuse_rows({"aligned": aligned, "global": glob, "nonaligned": nonaligned},
                       {"aligned": 1, "global": 1, "nonaligned": 1})
    assert GROUP_CLASSES[idx[0]] == "Negative"  # weights decide


def test_fuse_one_photo_and_abstention_renormalises():
    a = Pooled(np.array([0.1, 0.2, 0.7]), True, (0,))
    g = Pooled(np.array([0.6, 0.3, 0.1]), True)
    r = fuse({"aligned": a, "global": g, "nonaligned": Pooled.abstain()}, W)
    assert r.spoke == {"aligned": True, "global": True, "nonaligned": False}
    assert r.weights["nonaligned"] == 0.0
    assert math.isclose(r.weights["aligned"], 3 / 3.5) and math.isclose(r.weights["global"], 0.5 / 3.5)
    np.testing.assert_allclose(r.probs, (3 * a.probs + 0.5 * g.probs) / 3.5)
    assert r.label == "Positive" and not r.abstained
    only_global = fuse({"aligned": Pooled.abstain(), "global": g, "nonaligned": Pooled.abstain()}, W)
    np.testing.assert_allclose(only_global.probs, g.probs)
    assert only_global.weights["global"] == 1.0 and only_global.label == "Negative"
    none = fuse({"aligned": Pooled.abstain(), "nonaligned": Pooled.abstain()}, W)
    assert none.abstained and none.label == ABSTAIN and none.index == -1
    np.testing.assert_allclose(none.probs, np.full(3, 1 / 3))


def test_fuse_rows_with_spoke_masks():
    s = {"aligned": np.array([[0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]),
         "global": np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1]])}
    sp = {"aligned": np.array([True, False]), "global": np.array([True, True])}
    probs, idx = fuse_rows(s, {"aligned": 3.0, "global": 0.5}, sp)
    assert idx.tolist() == [2, 0]
    np.testing.assert_allclose(probs[1], s["global"][1])
    np.testing.assert_allclose(probs.sum(1), 1.0)
    _, idx = fuse_rows(s, {"aligned": 1.0, "global": 0.0}, sp)
    assert idx.tolist() == [2, -1]  # only a zero-weight branch spoke on photo 1


def test_fallback_labels_a_photo_no_weighted_branch_spoke_on():
    """Weights fitted on group photos may give the whole-image branch 0; it still labels a photo without faces."""
    s = {"aligned": np.array([[0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]),
         "global": np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1]])}
    sp = {"aligned": np.array([True, False]), "global": np.array([True, True])}
    probs, idx = fuse_rows(s, {"aligned": 1.0, "global": 0.0}, sp, fallback=["global"])
    assert idx.tolist() == [2, 0]
    np.testing.assert_allclose(probs[0], s["aligned"][0])  # where a weighted branch spoke the fallback is silent
    np.testing.assert_allclose(probs[1], s["global"][1])
    g = Pooled(s["global"][1], True)
    one = fuse({"aligned": Pooled.abstain(), "global": g}, {"aligned": 1.0, "global": 0.0}, fallback=["global"])
    assert one.label == "Negative" and one.weights == {"aligned": 0.0, "global": 1.0}
    assert fuse({"aligned": Pooled.abstain(), "global": g}, {"aligned": 1.0, "global": 0.0}).abstained


def test_weights_must_be_non_negative():
    with pytest.raises(ConfigError, match=">= 0"):
        fuse_rows({"a": np.ones((1, 3)) / 3}, {"a": -1.0})


# --------------------------------------------------------------------------- pooling

def test_pool_all_vs_top_k_by_box_area():
    probs = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.5, 0.5, 0]])
    areas = [10.0, 50.0, 30.0, 40.0]
    everything = pool(probs, areas)
    assert everything.spoke and everything.faces == (0, 1, 2, 3)
    np.testing.assert_allclose(everything.probs, probs.mean(0))
    top3 = pool(probs, areas, k=3)
    assert top3.faces == (1, 2, 3)  # the smallest face (area 10) is left out
    np.testing.assert_allclose(top3.probs, probs[[1, 2, 3]].mean(0))
    assert pool(probs, areas, k=1).faces == (1,)
    assert pool(probs, areas, k=10).faces == (0, 1, 2, 3)
    assert pool(probs, [5.0, 5.0, 5.0, 1.0], k=2).faces == (0, 1)  # ties keep detector order


def test_pool_without_faces_abstains():
    r = pool(np.zeros((0, 3)), [])
    assert r.spoke is False and r.faces == ()
    np.testing.assert_allclose(r.probs, np.full(3, 1 / 3))
    assert pool(np.zeros((0, 3)), [], k=3).spoke is False


def test_parse_pooling_and_weights():
    assert parse_pooling("all") is None and parse_pooling("top3") == 3 and parse_pooling("top-5") == 5
    assert parse_pooling(2) == 2
    for bad in ("top", "top0", "largest"):
        with pytest.raises(ConfigError):
            parse_pooling(bad)
    assert parse_weights("aligned=3, global=0.5,nonaligned=.5") == W
    with pytest.raises(ConfigError, match="NAME=NUMBER"):
        parse_weights("aligned:3")
    with pytest.raises(ConfigError, match="unknown branch"):
        parse_weights("face=1", ["aligned", "global"])


def test_preset_descriptions_state_their_weights():
    """Each preset's description names the weight of every branch it sets, e.g. ``Global VGG19 (0.8, ...)``."""
    pattern = {"aligned": r"Aligned \(([\d.]+)", "global": r"Global \w+ \(([\d.]+)", "nonaligned": r"Non-aligned \(([\d.]+)"}
    for key, p in PRESETS.items():
        stated = {b: float(re.search(rx, p.description).group(1)) for b, rx in pattern.items()}
        assert stated == p.weights, key


def test_presets():
    assert sorted(PRESETS) == [f"run{i}" for i in range(1, 8)]
    assert preset_weights("run1") == W
    assert preset_weights("emotiw17-run5") == preset_weights("5") == {"aligned": 3.2, "global": 0.8, "nonaligned": 0.6}
    assert {k for k, p in PRESETS.items() if p.weights == W} == {"run1", "run2", "run3", "run4"}
    got = preset_weights("run1")
    got["aligned"] = 0.0
    assert preset_weights("run1") == W, "a caller's change to its weights must not change the preset"
    with pytest.raises(ConfigError, match="run1"):
        preset_weights("run9")
    with pytest.raises(ConfigError, match="nonaligned"):
        preset_weights("run1", ["aligned", "global"])


# --------------------------------------------------------------------------- score files

def test_read_authors_scores_with_spaces_in_names(tmp_path):
    p = tmp_path / "aligned.txt"
    p.write_text("my group photo 1.jpg 0.1 0.2 0.7\n\n"
                 "pic\twith tab.png -1.5 0.25 3e-1\n"
                 "x.jpg 1 0 0\r\n", encoding="utf-8")
    t = read_scores(p)
    assert t.names == ["my group photo 1.jpg", "pic\twith tab.png", "x.jpg"]
    np.testing.assert_allclose(t.scores, [[0.1, 0.2, 0.7], [-1.5, 0.25, 0.3], [1, 0, 0]])
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg 0.1 0.2 0.7\nb.jpg 0.1 zero 0.7\n")
    with pytest.raises(DatasetError, match=r"bad.txt:2"):
        read_scores(bad)
    dup = tmp_path / "dup.txt"
    dup.write_text("a b.jpg 1 0 0\na b.jpg 0 1 0\n")
    with pytest.raises(DatasetError, match="more than one row"):
        read_scores(dup)


def test_score_files_round_trip_both_formats(tmp_path):
    names = ["a photo.jpg", "b, with comma.png", "ünï cødé.jpg"]
    scores = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25], [2.0, -1.0, 0.5]])
    for fmt in ("authors", "csv"):
        path = write_scores(tmp_path / f"s.{fmt}", names[:1] + names[2:] if fmt == "authors" else names,
                            scores[[0, 2]] if fmt == "authors" else scores, fmt=fmt)
        t = read_scores(path)
        assert t.names == (names[:1] + names[2:] if fmt == "authors" else names)
        np.testing.assert_allclose(t.scores, scores[[0, 2]] if fmt == "authors" else scores, atol=1e-6)
    reordered = tmp_path / "re.csv"
    reordered.write_text("name,Positive,Negative,Neutral,extra\nq.jpg,0.7,0.1,0.2,x\n")
    np.testing.assert_allclose(read_scores(reordered).scores, [[0.1, 0.2, 0.7]])


def test_align_tables_missing_rows_abstain(tmp_path):
    (tmp_path / "a.txt").write_text("p1.jpg 0.1 0.1 0.8\np2.jpg 0.8 0.1 0.1\n")
    (tmp_path / "g.txt").write_text("p2.jpg 0.1 0.8 0.1\np3 x.jpg 0.2 0.2 0.6\n")
    names, scores, spoke = align_tables({"a": read_scores(tmp_path / "a.txt"), "g": read_scores(tmp_path / "g.txt")})
    assert names == ["p1.jpg", "p2.jpg", "p3 x.jpg"]
    assert spoke["a"].tolist() == [True, True, False] and spoke["g"].tolist() == [False, True, True]
    np.testing.assert_allclose(scores["g"][2], [0.2, 0.2, 0.6])


def test_read_and_match_labels(tmp_path):
    (tmp_path / "l.csv").write_text("name,label\nPositive/a b.jpg,Positive\nc.jpg,0\nd.png,neutral\n")
    labels = read_labels(tmp_path / "l.csv")
    assert labels == {"Positive/a b.jpg": 2, "c.jpg": 0, "d.png": 1}
    (tmp_path / "l.txt").write_text("a b.jpg Positive\nc.jpg 0\n")
    assert read_labels(tmp_path / "l.txt") == {"a b.jpg": 2, "c.jpg": 0}
    assert match_labels(["Positive/a b.jpg", "c", "zzz.jpg"], labels).tolist() == [2, 0, -1]
    (tmp_path / "bad.csv").write_text("a.jpg,Positive\nb.jpg,happy\n")
    with pytest.raises(DatasetError, match="bad.csv:2"):
        read_labels(tmp_path / "bad.csv")


# --------------------------------------------------------------------------- weight search

def test_simplex_grid():
    g = simplex_grid(3, 0.1)
    assert g.shape == (66, 3)
    np.testing.assert_allclose(g.sum(1), 1.0)
    assert len({tuple(r) for r in np.round(g, 6)}) == 66
    assert simplex_grid(2, 0.5).tolist() == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    with pytest.raises(ConfigError, match="divide 1"):
        simplex_grid(3, 0.3)


def test_search_finds_planted_optimum():
    rng = np.random.default_rng(0)
    n = 2000
    scores = {b: rng.dirichlet(np.ones(3), n) for b in ("aligned", "global", "nonaligned")}
    planted = {"aligned": 0.6, "global": 0.3, "nonaligned": 0.1}
    y = sum(planted[b] * scores[b] for b in scores).argmax(1)
    res = search_weights(scores, y, step=0.1)
    assert len(res.trials) == 66 and len(res.rows()) == 66
    assert res.best_accuracy == 1.0
    assert res.best_weights == pytest.approx(planted)
    assert (res.accuracy < 1.0).sum() == 65  # the optimum is unique on this grid


def test_search_ties_go_to_equal_weights_and_abstentions_count_wrong():
    s = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    res = search_weights({"a": s, "b": s}, [2, 0], step=0.1)
    assert np.all(res.accuracy == 1.0)
    assert res.best_weights == pytest.approx({"a": 0.5, "b": 0.5})
    sp = {"a": np.array([True, False]), "b": np.array([True, True])}
    res = search_weights({"a": s, "b": s}, [2, 0], step=0.5, spoke=sp)
    first = res.rows()[0]
    assert {k: first[k] for k in ("a", "b", "accuracy")} == {"a": 1.0, "b": 0.0, "accuracy": 0.5}  # photo 2 unlabelled
    assert first["log_loss"] == pytest.approx((-np.log(0.7) - np.log(1 / 3)) / 2)  # an abstention scores 1/3


def test_balanced_search_weighs_a_rare_class_as_much_as_a_common_one():
    """Branch a is right on the 9 common photos only, b on the rare one and on 5 common ones: accuracy
    prefers a (0.9 vs 0.6), balanced accuracy prefers b ((5/9 + 1) / 2 = 0.78 vs 0.5)."""
    y = np.array([0] * 9 + [2])
    right = np.eye(3)[y] * 0.8 + 0.1
    wrong = np.eye(3)[(y + 1) % 3] * 0.8 + 0.1
    a = np.vstack([right[:9], wrong[9:]])
    b = np.vstack([right[:5], wrong[5:9], right[9:]])
    plain = search_weights({"a": a, "b": b}, y, step=1.0)
    balanced = search_weights({"a": a, "b": b}, y, step=1.0, balanced=True)
    assert plain.best_weights == {"a": 1.0, "b": 0.0} and plain.best_accuracy == pytest.approx(0.9)
    assert balanced.best_weights == {"a": 0.0, "b": 1.0} and balanced.best_accuracy == pytest.approx((5 / 9 + 1) / 2)


def test_log_loss_search_prefers_the_better_calibrated_mix_among_accuracy_ties():
    """Both branches are always right, so every mix ties on accuracy (the tie goes to equal weights);
    by log loss the confident branch alone is best."""
    y = np.zeros(4, dtype=np.int64)
    timid = np.tile([0.4, 0.3, 0.3], (4, 1))
    sure = np.tile([0.9, 0.05, 0.05], (4, 1))
    by_acc = search_weights({"timid": timid, "sure": sure}, y, step=0.1)
    by_loss = search_weights({"timid": timid, "sure": sure}, y, step=0.1, objective="log_loss")
    assert by_acc.best_weights == pytest.approx({"timid": 0.5, "sure": 0.5})
    assert by_loss.best_weights == pytest.approx({"timid": 0.0, "sure": 1.0})
    assert by_loss.best_log_loss == pytest.approx(-np.log(0.9)) and by_loss.best_accuracy == 1.0
    assert by_loss.order()[0] == by_loss.best_index and by_acc.objective == "accuracy"
    with pytest.raises(ConfigError, match="objective"):
        search_weights({"a": sure}, y, objective="brier")


# --------------------------------------------------------------------------- fuse CLI

def _write_branch_files(tmp_path):
    files = {
        "aligned": "g 1.jpg 0.1 0.1 0.8\ng 2.jpg 0.7 0.2 0.1\ng 3.png 0.2 0.6 0.2\n",
        "global": "g 1.jpg 0.5 0.3 0.2\ng 2.jpg 3.0 0.0 0.0\ng 3.png 0.1 0.1 0.8\ng 3.jpg 0.1 0.8 0.1\n",
        "nonaligned": "g 1.jpg 0.3 0.3 0.4\ng 2.jpg 0.4 0.4 0.2\n",
    }
    out = {}
    for b, text in files.items():
        out[b] = tmp_path / f"{b}.txt"
        out[b].write_text(text, encoding="utf-8")
    return out


def test_fuse_cli_preset_and_challenge_files(tmp_path, capsys):
    files = _write_branch_files(tmp_path)
    out = tmp_path / "pred.csv"
    rc = main(["fuse", *(f"--branch={b}={p}" for b, p in files.items()), "--preset", "run1", "-o", str(out),
               "--challenge-dir", str(tmp_path / "chal")])
    assert rc == 0
    rows = {r["name"]: r for r in csv.DictReader(out.open(encoding="utf-8"))}
    assert list(rows) == ["g 1.jpg", "g 2.jpg", "g 3.png", "g 3.jpg"]
    assert rows["g 1.jpg"]["label"] == "Positive" and rows["g 2.jpg"]["label"] == "Negative"
    assert rows["g 3.png"]["label"] == "Neutral"  # aligned 3.0 outweighs global 0.5; non-aligned abstains
    assert rows["g 3.png"]["spoke"] == "aligned+global"
    assert rows["g 3.jpg"]["spoke"] == "global" and rows["g 3.jpg"]["label"] == "Neutral"
    assert (tmp_path / "chal" / "g 1.txt").read_text() == "Positive\n"
    assert (tmp_path / "chal" / "g 3.png.txt").read_text() == "Neutral\n"  # same stem as g 3.jpg
    assert (tmp_path / "chal" / "g 3.jpg.txt").exists()
    assert "4 photos fused" in capsys.readouterr().err


def test_fuse_cli_search_writes_every_trial(tmp_path, capsys):
    files = _write_branch_files(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("name,label\ng 1.jpg,Positive\ng 2.jpg,Negative\ng 3.png,Positive\ng 3.jpg,Neutral\n")
    trials = tmp_path / "trials.csv"
    rc = main(["fuse", *(f"--branch={b}={p}" for b, p in files.items()), "--search", "--labels", str(labels),
               "--step", "0.25", "--trials", str(trials), "-o", str(tmp_path / "p.csv")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "15 weight sets tried" in err and "best:" in err and "fused: accuracy 100.00%" in err
    rows = list(csv.DictReader(trials.open()))
    assert len(rows) == 15 and set(rows[0]) == {"aligned", "global", "nonaligned", "accuracy", "log_loss"}
    assert max(float(r["accuracy"]) for r in rows) == 1.0
    rc = main(["fuse", *(f"--branch={b}={p}" for b, p in files.items()), "--search", "--labels", str(labels),
               "--step", "0.25", "--objective", "log_loss", "--trials", str(trials), "-o", str(tmp_path / "p.csv")])
    assert rc == 0 and "(by log_loss;" in capsys.readouterr().err
    rows = list(csv.DictReader(trials.open()))
    assert min(float(r["log_loss"]) for r in rows) < max(float(r["log_loss"]) for r in rows)


def test_fuse_cli_usage_errors(tmp_path, capsys):
    files = _write_branch_files(tmp_path)
    args = ["fuse", f"--branch=aligned={files['aligned']}"]
    assert main([*args, "--weights", "aligned=1", "--preset", "run1"]) == 2
    assert main([*args, "--search"]) == 2
    assert main([*args]) == 2
    assert main(["fuse", "--branch", "aligned", "--weights", "aligned=1"]) == 2
    assert main([*args, "--weights", "global=1"]) == 2  # unknown branch
    assert main(["fuse", f"--branch=a={tmp_path / 'missing.txt'}", "--weights", "a=1"]) == 2
    assert "does not exist" in capsys.readouterr().err
