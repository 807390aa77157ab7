"""recall@K (AdNanny Eq. 8) with the real frozen MiniLM embedder and faiss: hand-computed values, monotonicity,
the per-sample and batch modes, the batch-mode zero-advantage pitfall, g_t, IVF vs exact search."""

from __future__ import annotations

import numpy as np
import pytest
import rewards_support as rs

from megatron_ads.data import synthetic
from megatron_ads.rewards import registry, retrieval
from megatron_ads.rewards.retrieval import AdIndex, GTransform, IndexConfig, Retriever, recall_at_k


@pytest.fixture(scope="module")
def emb():
    return rs.embedder()


@pytest.fixture(scope="module")
def corpus():
    return synthetic.ad_corpus(seed=0)


@pytest.fixture(scope="module")
def retriever(emb, corpus):
    return Retriever(emb, corpus)


def advantages(rewards: list[float], eps: float = 1e-6) -> np.ndarray:
    """GRPO group-normalized advantages (r - mean) / (std + eps)."""
    r = np.asarray(rewards, dtype=np.float64)
    return (r - r.mean()) / (r.std() + eps)


def completion(*queries: str) -> str:
    return "<think>narrower queries</think>\n" + "\n".join(f"<Query>{q}</Query>" for q in queries)


# ------------------------------------------------------------------------------------ recall@K by hand
def test_recall_at_k_hand_computed_lists():
    results = [[0, 1, 2], [3, 1, 5]]
    rel = {1, 3, 4, 9}
    assert recall_at_k(results, rel, 1) == 1 / 4  # {0, 3}
    assert recall_at_k(results, rel, 2) == 2 / 4  # {0, 1, 3}
    assert recall_at_k(results, rel, 3) == 2 / 4  # {0, 1, 2, 3, 5}
    assert recall_at_k([[4, -1, -1]], rel, 3) == 1 / 4  # IVF's -1 padding is ignored
    assert recall_at_k([], rel, 5) == 0.0
    with pytest.raises(ValueError, match="relevant"):
        recall_at_k([[1]], set(), 1)


def test_index_on_hand_made_vectors():
    # five unit vectors at angles 0, 20, 40, 90, 180 degrees; a query at 0 degrees ranks them in that order
    ang = np.deg2rad([0, 20, 40, 90, 180])
    vecs = np.stack([np.cos(ang), np.sin(ang)], 1)
    index = AdIndex(vecs)
    ids = index.search(np.array([[1.0, 0.0]]), 3)
    assert ids.tolist() == [[0, 1, 2]]
    rel = {1, 3}
    assert recall_at_k(ids, rel, 1) == 0.0
    assert recall_at_k(ids, rel, 2) == 0.5
    # a second query at 90 degrees finds ad 3 first: the union reaches both relevant ads at K=2
    both = index.search(np.array([[1.0, 0.0], [0.0, 1.0]]), 2)
    assert recall_at_k(both, rel, 2) == 1.0
    assert index.search(np.array([[1.0, 0.0]]), 50).shape == (1, 5)  # K capped at the corpus size


def test_recall_hand_computed_on_tiny_text_corpus(emb):
    corpus = {"ads": [{"id": "c1", "title": "Lavazza espresso roast coffee beans", "description": "Whole bean coffee."},
                      {"id": "c2", "title": "Illy dark roast coffee beans", "description": "Fresh roasted coffee."},
                      {"id": "s1", "title": "Nike trail running shoes", "description": "Lightweight runners."},
                      {"id": "s2", "title": "Asics racing flats", "description": "Running shoes for races."},
                      {"id": "l1", "title": "Dell ultrabook laptop", "description": "Thin and light laptops."},
                      {"id": "l2", "title": "Lenovo gaming laptop", "description": "Fast laptops for games."}],
              "relevant": {"coffee beans": ["c1", "c2"], "running shoes": ["s1", "s2"]}}
    r = Retriever(emb, corpus)
    top = r.search(["coffee beans", "running shoes"], 2)
    assert {r.ids[i] for i in top[0]} == {"c1", "c2"}
    assert {r.ids[i] for i in top[1]} == {"s1", "s2"}
    rel = r.relevant["coffee beans"]
    assert r.recall(["coffee beans"], rel, 1) == 0.5  # one of the two coffee ads
    assert r.recall(["coffee beans"], rel, 2) == 1.0
    assert r.recall(["gaming laptop"], rel, 2) == 0.0  # both laptops come first


def test_recall_monotone_in_k_and_in_queries(retriever, corpus):
    for kw in sorted(corpus["relevant"])[:4]:
        rel = retriever.relevant[kw]
        for qs in ([kw], [kw, f"cheap {kw}", f"{kw} near me"]):
            top30 = retriever.search(qs, 30)
            np.testing.assert_array_equal(retriever.search(qs, 10), top30[:, :10])  # top-K is a prefix of top-K'
            rs_ = [recall_at_k(top30, rel, k) for k in range(1, 31)]
            assert rs_[9] == retriever.recall(qs, rel, 10)
            assert all(0.0 <= x <= 1.0 for x in rs_)
            assert all(a <= b for a, b in zip(rs_, rs_[1:])), (kw, qs, rs_)
        # adding a query never lowers recall (results are merged)
        assert retriever.recall([kw, f"premium {kw}"], rel, 10) >= retriever.recall([kw], rel, 10)


def test_embedder_is_deterministic(emb):
    texts = ["cheap running shoes", "Nike trail runners - budget running shoes. Shop now!", "espresso"]
    a = emb(texts)
    assert a.dtype == np.float32 and a.shape == (3, emb.dim)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    fresh = retrieval.MiniLMEmbedder.__new__(retrieval.MiniLMEmbedder)  # same model, no cache, other batches
    fresh.__dict__.update(emb.__dict__)
    fresh.cfg = retrieval.EmbedderConfig(batch_size=1, cache_size=0)
    np.testing.assert_allclose(fresh(texts[::-1])[::-1], a, atol=1e-5)
    np.testing.assert_array_equal(emb(texts), a)


# ------------------------------------------------------------------------------------ the reward
def recall_reward(resources, **params):
    return registry.build("recall_at_k", resources, params)


def test_per_sample_reward_values(retriever, corpus):
    res = rs.resources(ad_corpus=corpus)
    fn = recall_reward(res, k=10)
    kw = "running shoes"
    rel = retriever.relevant[kw]
    good = ["Nike running shoes", "cheap running shoes", "trail runners running shoes"]
    comps = [completion(*good), completion(), "no tags at all", completion(kw), completion("espresso roast coffee")]
    meta = [{"keyword": kw}] * len(comps)
    out = registry.call(fn, [""] * len(comps), comps, "query_gen", meta)
    base = retriever.recall([kw], rel, 10)
    assert out.values[0] == pytest.approx(retriever.recall([kw] + good, rel, 10) - base)
    assert out.values[0] > 0
    assert out.values[1:4] == [0.0, 0.0, 0.0]  # no added query (none, unparsable, or the keyword again) -> 0
    assert out.values[4] == 0.0  # an off-topic query retrieves no relevant ad
    # not applicable without a keyword that has relevant ads
    out = registry.call(fn, ["", ""], [completion(*good)] * 2, "query_gen", [{}, {"keyword": "unknown"}])
    assert out.values == [None, None]
    # an explicit relevance set overrides the corpus's
    out = registry.call(fn, [""], [completion(*good)], "query_gen",
                        [{"keyword": kw, "relevant_ads": [retriever.ids[i] for i in sorted(rel)[:3]]}])
    assert out.values[0] is not None and 0.0 <= out.values[0] <= 1.0


def test_max_queries_caps_the_union(retriever, corpus):
    res = rs.resources(ad_corpus=corpus)
    kw = "tents"
    qs = ["REI tents", "Coleman family tent", "MSR 2 person tent", "cheap tents", "premium tents"]
    one = registry.call(recall_reward(res, max_queries=1), [""], [completion(*qs)], "query_gen", [{"keyword": kw}])
    rel = retriever.relevant[kw]
    assert one.values[0] == pytest.approx(retriever.recall([kw, qs[0]], rel, 10) - retriever.recall([kw], rel, 10))


def group_rollouts(corpus):
    """4 prompts (keywords) x G=4 rollouts of differing quality, flattened with group/rollout indices."""
    kws = ["running shoes", "coffee beans", "laptops", "sofas"]
    comps, meta = [], []
    for j, kw in enumerate(kws):
        brands = synthetic.CATALOGUE[kw]["brands"]
        rollouts = [completion(f"{brands[0]} {kw}", f"cheap {kw}", f"premium {kw}"),
                    completion(f"{brands[1]} {kw}"),
                    completion("unrelated words"),
                    completion()]
        for g, c in enumerate(rollouts):
            comps.append(c)
            meta.append({"keyword": kw, "group": j, "rollout": g})
    return comps, meta


def test_batch_mode_pitfall_zero_advantages(corpus):
    """Eq. 8 literally: one reward for the whole batch. With all G rollouts of each prompt in that batch,
    every group's rewards are equal and every GRPO advantage is 0; per-sample rewards are not."""
    res = rs.resources(ad_corpus=corpus)
    comps, meta = group_rollouts(corpus)
    G = 4
    one_batch = registry.call(recall_reward(res, mode="batch", batch_by=None), [""] * len(comps), comps,
                              "query_gen", meta).values
    assert len(set(one_batch)) == 1 and one_batch[0] > 0  # the batch did gain recall...
    for j in range(4):
        np.testing.assert_array_equal(advantages(one_batch[j * G:(j + 1) * G]), 0.0)  # ...but no signal
    per_sample = registry.call(recall_reward(res), [""] * len(comps), comps, "query_gen", meta).values
    adv = [advantages(per_sample[j * G:(j + 1) * G]) for j in range(4)]
    assert all(np.abs(a).max() > 0.5 for a in adv)
    for j in range(4):  # three on-topic queries beat none; no query has the lowest advantage (gains are >= 0)
        assert adv[j][0] > adv[j][3] and adv[j][3] == adv[j].min()
    # the paper-literal fix: one batch per rollout index g -> group members get different rewards
    per_g = registry.call(recall_reward(res, mode="batch"), [""] * len(comps), comps, "query_gen", meta).values
    assert len(set(per_g)) > 1
    assert all(np.abs(advantages(per_g[j * G:(j + 1) * G])).max() > 0.5 for j in range(4))
    for g in range(G):  # the batch of rollout index g: mean over the prompts' per-sample deltas
        assert per_g[g] == pytest.approx(np.mean([per_sample[j * G + g] for j in range(4)]))
    with pytest.raises(ValueError, match=r"meta\[0\]\.rollout"):
        registry.call(recall_reward(res, mode="batch"), [""], [comps[0]], "query_gen", [{"keyword": "sofas"}])


@pytest.mark.parametrize("kind", ["identity", "scale", "tanh", "clip"])
def test_g_transforms(kind):
    g = GTransform(kind=kind, scale=0.5)
    assert g(0.0) == 0.0
    xs = np.linspace(-2, 2, 41)
    ys = [g(x) for x in xs]
    assert all(a <= b for a, b in zip(ys, ys[1:]))  # monotone
    expect = {"identity": 0.3, "scale": 0.6, "tanh": np.tanh(0.6), "clip": 0.6}[kind]
    assert g(0.3) == pytest.approx(expect)
    if kind == "clip":
        assert g(5.0) == 1.0 and g(-5.0) == -1.0
    with pytest.raises(ValueError, match="g_scale"):
        GTransform(kind=kind, scale=0.0)


def test_g_applies_to_the_reward(corpus):
    res = rs.resources(ad_corpus=corpus)
    comps, meta = group_rollouts(corpus)
    raw = registry.call(recall_reward(res), [""] * 4, comps[:4], "query_gen", meta[:4]).values
    tanh = registry.call(recall_reward(res, g="tanh", g_scale=0.2), [""] * 4, comps[:4], "query_gen", meta[:4]).values
    assert tanh == pytest.approx([np.tanh(r / 0.2) for r in raw])


def test_ivf_matches_flat_at_full_probe(emb, corpus):
    vecs = emb([retrieval.ad_text(a) for a in corpus["ads"]])
    queries = emb(["running shoes", "cheap coffee beans", "noise cancelling headphones near me", "sofa"])
    flat = AdIndex(vecs).search(queries, 10)
    ivf = AdIndex(vecs, IndexConfig(kind="ivf", nlist=8, nprobe=8)).search(queries, 10)
    np.testing.assert_array_equal(ivf, flat)
    partial = AdIndex(vecs, IndexConfig(kind="ivf", nlist=8, nprobe=1)).search(queries, 10)
    assert partial.shape == flat.shape  # approximate: may differ, but answers every query
    with pytest.raises(ValueError, match="nlist"):
        AdIndex(vecs[:4], IndexConfig(kind="ivf", nlist=8, nprobe=8))


def test_params_validation_names_the_field():
    for params, field in [({"k": 0}, "k"), ({"mode": "global"}, "mode"), ({"g": "sign"}, "g"),
                          ({"index": "hnsw"}, "kind"), ({"index": "ivf", "nlist": 4, "nprobe": 8}, "nprobe"),
                          ({"max_queries": 0}, "max_queries"), ({"topk": 3}, "topk")]:
        with pytest.raises(ValueError, match=rf"reward_params\.recall_at_k\.{field}"):
            registry.make_params("recall_at_k", params)
    with pytest.raises(ValueError, match=r"resources\.ad_corpus"):
        registry.build("recall_at_k", rs.resources())
