from pathlib import Path

import numpy as np
import pytest

from geoloc.data.images import load_image
from geoloc.encoder.mllm import MllmEncoder
from geoloc.errors import GeolocError
from geoloc.index.explain import MAX_JUDGED, Generator, judge_hits, rerank, search_and_judge, tile_prompt
from geoloc.index.search import SearchIndex

QUERY = "a red building with some trees in the top left"


def test_explain_gives_one_verdict_per_top_tile(search_index: SearchIndex) -> None:
    hits = search_index.search(QUERY, k=3)
    judged = judge_hits(search_index, QUERY, hits, explain=True, max_new_tokens=4)
    assert [j.hit for j in judged] == hits
    assert [j.retrieval_rank for j in judged] == [1, 2, 3]
    assert all(isinstance(j.explanation, str) and j.explanation for j in judged)
    assert all(np.isfinite(j.judgement) for j in judged)
    row = judged[0].to_dict()
    assert {"rank", "score", "key", "lat", "lon", "judgement", "retrieval_rank", "explanation"} <= set(row)


def test_explanations_decoded_side_by_side_are_each_tiles_own(search_index: SearchIndex) -> None:
    """explain_all decodes tiles in batches (their prompts are the same tokens: no padding);
    each answer is the one a tile decoded alone gets."""
    tiles = [load_image(search_index.image_path(h.key)) for h in search_index.search(QUERY, k=3)]
    generator = Generator(search_index.encoder)
    alone = [generator.explain(tile, QUERY, max_new_tokens=6) for tile in tiles]
    assert generator.explain_all(tiles, QUERY, max_new_tokens=6, batch_size=2) == alone
    assert all(alone)


def test_rerank_orders_by_the_generators_judgement(search_index: SearchIndex) -> None:
    reranked = search_and_judge(search_index, QUERY, k=8, rerank_results=True)
    plain = judge_hits(search_index, QUERY, search_index.search(QUERY, k=8))
    expected = sorted(plain, key=lambda j: -j.judgement)
    assert [j.hit.key for j in reranked] == [j.hit.key for j in expected]
    assert [j.hit.rank for j in reranked] == list(range(1, 9))
    assert [j.retrieval_rank for j in reranked] == [j.hit.rank for j in expected]
    assert np.allclose([j.judgement for j in reranked], [j.judgement for j in expected])
    # The judgements differ between tiles, so the re-ranking is a real re-ordering.
    assert len({round(j.judgement, 6) for j in plain}) > 1


def test_rerank_is_stable_on_ties(search_index: SearchIndex) -> None:
    judged = judge_hits(search_index, QUERY, search_index.search(QUERY, k=3))
    for j in judged:
        j.judgement = 0.0
    assert [j.hit.key for j in rerank(judged)] == [j.hit.key for j in judged]


def test_the_generator_answers_with_the_retrieval_adapter_off(search_index: SearchIndex) -> None:
    tiles = [load_image(search_index.image_path(h.key)) for h in search_index.search(QUERY, k=3)]
    with_adapter_off = Generator(search_index.encoder).judge(tiles, QUERY)
    # The same preset without any adapter: the judgement must be the bare backbone's.
    bare = Generator(MllmEncoder.load("tiny-smolvlm")).judge(tiles, QUERY)
    assert np.allclose(with_adapter_off, bare, atol=1e-4)
    # With the adapter left on, the answer changes: the switch-off is what makes them equal.
    adapter_on = Generator(search_index.encoder)
    adapter_on.adapter_disabled = False
    assert not np.allclose(adapter_on.judge(tiles, QUERY), bare, atol=1e-4)
    # The encoder is left as it was: retrieval still uses the adapter.
    assert search_index.encoder.backbone.active_adapters == ["default"]


def test_internvl_backbones_generate_too(tiny_city: Path) -> None:
    from geoloc.data.manifest import read_manifest

    generator = Generator(MllmEncoder.load("tiny-internvl"))
    tiles = [load_image(r.image) for r in read_manifest(tiny_city).records[:2]]
    assert generator.judge(tiles, QUERY).shape == (2,)
    assert isinstance(generator.explain(tiles[0], QUERY, max_new_tokens=3), str)


def test_the_prompt_is_image_first_through_the_chat_template(search_index: SearchIndex) -> None:
    encoder = search_index.encoder
    tokenizer, family, config = encoder.tokenizer, encoder.family, encoder.config
    placeholder = family.placeholder(config)
    # No template (the tiny presets): a plain layout, the tile first.
    assert tile_prompt(tokenizer, family, config, "Is it?") == f"User:{placeholder}\nIs it?\nAssistant:"
    parts = (
        "{% for m in messages %}<{{ m['role'] }}>{% for p in m['content'] %}"
        "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}{% endfor %}"
        "{% endfor %}<assistant>"
    )
    text_only = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = parts
        assert tile_prompt(tokenizer, family, config, "Is it?") == f"<user>{placeholder}Is it?<assistant>"
        tokenizer.chat_template = text_only  # renders no image: refused, not silently text-only
        with pytest.raises(GeolocError, match="does not render one image"):
            tile_prompt(tokenizer, family, config, "Is it?")
    finally:
        tokenizer.chat_template = original


def test_judging_is_bounded(search_index: SearchIndex) -> None:
    with pytest.raises(GeolocError, match=f"at most {MAX_JUDGED} tiles"):
        search_and_judge(search_index, QUERY, k=MAX_JUDGED + 1)
