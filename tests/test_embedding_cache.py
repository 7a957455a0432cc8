"""Tests for minimagen/embedding_cache.py: hits, misses, invalidation, layout, atomic writes.

Most tests use `FakeEncoder`, whose output is known by hand: caption c has n = len(c) + 1 tokens and
token t is the vector [len(c), t, 1] (D = 3). One test checks the real tiny T5 end to end.
"""

import copy
import json
import warnings

import pytest
import torch

import minimagen.embedding_cache as ec
from minimagen.embedding_cache import CaptionNotCachedError, EmbeddingCache
from minimagen.text_encoder import TextEncoder, encoder_fingerprint, load_text_encoder, save_tiny_t5


class FakeEncoder:
    def __init__(self, name="fake", max_length=64, fingerprint="fake-weights-v1"):
        self.name, self.max_length, self.fingerprint = name, max_length, fingerprint
        self.calls = []  # the caption lists passed to encode, in order

    def encode(self, captions):
        self.calls.append(list(captions))
        counts = [len(c) + 1 for c in captions]
        embeds = torch.zeros(len(captions), max(counts), 3)  # [B, L, 3]
        mask = torch.zeros(len(captions), max(counts), dtype=torch.bool)  # [B, L]
        for b, (caption, n) in enumerate(zip(captions, counts)):
            for t in range(n):
                embeds[b, t] = torch.tensor([len(caption), t, 1.0])
            mask[b, :n] = True
        return embeds, mask


FP = "fake-weights-v1"  # FakeEncoder's default fingerprint


def expected(caption, length):
    """The FakeEncoder's row for `caption`, padded with zeros to `length` tokens: [length, 3]."""
    rows = [[len(caption), t, 1.0] for t in range(len(caption) + 1)]
    return torch.tensor(rows + [[0.0, 0.0, 0.0]] * (length - len(rows)))


def test_get_returns_stored_tokens_padded_to_longest_requested_caption(tmp_path):
    cache = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)
    cache.add(["ab", "abcd", "a much longer caption"], FakeEncoder())
    embeds, mask = cache.get(["abcd", "ab"])  # longest requested: "abcd", 5 tokens
    assert embeds.shape == (2, 5, 3) and embeds.dtype == torch.float32
    assert torch.equal(embeds[0], expected("abcd", 5)) and torch.equal(embeds[1], expected("ab", 5))
    assert mask.tolist() == [[True] * 5, [True] * 3 + [False] * 2]


def test_encoder_runs_only_for_captions_not_yet_cached(tmp_path):
    encoder = FakeEncoder()
    cache = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)
    cache.encode(["a", "b"], encoder)
    cache.encode(["b", "c", "a"], encoder)
    cache.encode(["c", "b"], encoder)
    assert encoder.calls == [["a", "b"], ["c"]]
    assert len(cache) == 3 and "c" in cache and "d" not in cache


def test_duplicate_captions_are_encoded_once(tmp_path):
    encoder = FakeEncoder()
    cache = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)
    embeds, _ = cache.encode(["x", "x", "yy", "x"], encoder)
    assert encoder.calls == [["x", "yy"]] and len(cache) == 2
    assert torch.equal(embeds[0], embeds[3])


def test_reopened_cache_serves_embeddings_from_disk_without_an_encoder(tmp_path):
    captions = ["a red circle", "", "a blue square"]
    first = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)
    e1, m1 = first.encode(captions, FakeEncoder())
    reopened = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)
    e2, m2 = reopened.encode(captions)  # no encoder: every caption must be a hit
    assert torch.equal(e1, e2) and torch.equal(m1, m2)
    assert len(reopened) == 3 and reopened.embed_dim == 3 and reopened.captions() == captions


def test_empty_string_caption_is_cached_with_its_one_token(tmp_path):
    cache = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)
    embeds, mask = cache.encode([""], FakeEncoder())
    assert mask.tolist() == [[True]] and embeds.tolist() == [[[0.0, 0.0, 1.0]]]


def test_other_encoder_name_or_max_length_uses_a_separate_cache(tmp_path):
    cache = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)
    cache.add(["a red circle"], FakeEncoder())
    for name, max_length in [("fake", 32), ("other-encoder", 64)]:
        other = EmbeddingCache(tmp_path, name, max_length, fingerprint=FP)
        assert len(other) == 0 and "a red circle" not in other and other.path != cache.path
    encoder = FakeEncoder("fake", 32)
    EmbeddingCache(tmp_path, "fake", 32, fingerprint=FP).encode(["a red circle"], encoder)
    assert encoder.calls == [["a red circle"]]  # a miss: encoded again for the new max_length


def test_similar_encoder_names_do_not_share_a_folder(tmp_path):
    assert EmbeddingCache(tmp_path, "org/model", 64, fingerprint=FP).path != EmbeddingCache(tmp_path, "org-model", 64, fingerprint=FP).path


def test_add_refuses_an_encoder_with_another_name_or_max_length(tmp_path):
    cache = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)
    for encoder in [FakeEncoder("other", 64), FakeEncoder("fake", 32)]:
        with pytest.raises(ValueError, match="for_encoder"):
            cache.add(["a"], encoder)
    assert len(cache) == 0


def test_missing_caption_raises_keyerror_naming_the_caption_and_the_fix(tmp_path):
    cache = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)
    cache.add(["cached"], FakeEncoder())
    with pytest.raises(CaptionNotCachedError) as info:
        cache.get(["cached", "never seen"])
    assert isinstance(info.value, KeyError)
    assert "'never seen'" in str(info.value) and "cache.encode(captions, encoder)" in str(info.value)
    with pytest.raises(CaptionNotCachedError):
        cache.encode(["never seen"])  # no encoder given: a miss cannot be filled


def test_as_tensors_batches_equal_get_and_are_trimmed_to_the_batch(tmp_path):
    cache = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)
    cache.add(["ab", "abcdefg", "abc"], FakeEncoder())
    table = cache.as_tensors()
    assert table.captions == ["ab", "abcdefg", "abc"] and table.embeds.shape == (3, 8, 3)
    embeds, mask = table.batch(table.rows_of(["abc", "ab"]))
    assert embeds.shape == (2, 4, 3)  # longest in this batch: "abc", 4 tokens
    e_get, m_get = cache.get(["abc", "ab"])
    assert torch.equal(embeds, e_get) and torch.equal(mask, m_get)


def test_shards_split_every_shard_captions_and_encoder_calls_every_batch_size(tmp_path):
    encoder = FakeEncoder()
    cache = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP, batch_size=2, shard_captions=3)
    captions = ["a", "bb", "ccc", "dddd", "eeeee"]
    cache.add(captions, encoder)
    assert encoder.calls == [["a", "bb"], ["ccc"], ["dddd", "eeeee"]]
    assert sorted(p.name for p in cache.path.glob("*.safetensors")) == [
        "shard_00000.safetensors", "shard_00001.safetensors"]
    embeds, _ = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP).get(captions)
    for b, caption in enumerate(captions):
        assert torch.equal(embeds[b], expected(caption, 6))


def test_cache_folder_holds_only_json_and_safetensors_and_no_temporary_files(tmp_path):
    cache = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)
    cache.add(["a", "b"], FakeEncoder())
    cache.add(["c"], FakeEncoder())
    names = sorted(p.name for p in cache.path.iterdir())
    assert names == ["index.json", "shard_00000.safetensors", "shard_00001.safetensors"]
    index = json.loads((cache.path / "index.json").read_text())
    # "c" (2 tokens) starts shard 1; "b" starts after the 2 tokens of "a" in shard 0
    assert index["captions"] == {"a": [0, 0, 2], "b": [0, 2, 2], "c": [1, 0, 2]}


def test_failed_shard_write_leaves_the_index_untouched(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)
    cache.add(["kept"], FakeEncoder())

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ec, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cache.add(["lost"], FakeEncoder())
    reopened = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)
    assert reopened.captions() == ["kept"]
    assert sorted(p.name for p in cache.path.iterdir()) == ["index.json", "shard_00000.safetensors"]


def test_index_written_for_another_key_is_refused(tmp_path):
    cache = EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)
    cache.add(["a"], FakeEncoder())
    index_file = cache.path / "index.json"
    index_file.write_text(json.dumps(dict(json.loads(index_file.read_text()), max_length=32)))
    with pytest.raises(ValueError, match="delete the folder"):
        EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP)


@pytest.mark.parametrize("field, kwargs", [
    ("encoder_name", dict(encoder_name="")), ("max_length", dict(max_length=0)),
    ("batch_size", dict(batch_size=0)), ("shard_captions", dict(shard_captions=-1))])
def test_invalid_settings_name_the_field(tmp_path, field, kwargs):
    settings = dict(encoder_name="fake", max_length=64) | kwargs
    with pytest.raises(ValueError, match=field):
        EmbeddingCache(tmp_path, **settings)


def test_tiny_t5_embeddings_from_the_cache_match_direct_encoding(tmp_path):
    encoder = load_text_encoder("tiny-t5", max_length=32)
    captions = ["a red circle", "", "a green triangle on the left"]
    cache = EmbeddingCache.for_encoder(tmp_path, encoder)
    cache.encode(captions, encoder)
    for subset in (captions, captions[:2]):
        cached, cached_mask = EmbeddingCache.for_encoder(tmp_path, encoder).get(subset)
        direct, direct_mask = encoder.encode(subset)
        assert torch.equal(cached_mask, direct_mask)
        torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-5)


# ---- the key includes what determines the embeddings, not only the encoder's name ----------------------
def test_same_encoder_name_with_changed_weights_gets_a_new_cache_folder(tmp_path):
    folder = save_tiny_t5(tmp_path / "my-t5")
    first = load_text_encoder(str(folder))
    old = EmbeddingCache.for_encoder(tmp_path / "cache", first)
    old.add(["a red circle"], first)
    with torch.no_grad():  # "retrain" the encoder: same name, same folder, other weights
        first.model.shared.weight.mul_(-1)
    first.model.save_pretrained(folder)
    second = load_text_encoder(str(folder))
    new = EmbeddingCache.for_encoder(tmp_path / "cache", second)
    assert new.path != old.path and "a red circle" not in new
    # opened by name, without loading the encoder: the fingerprint comes from the files, the same folder
    assert EmbeddingCache(tmp_path / "cache", str(folder), 64).path == new.path
    assert EmbeddingCache(tmp_path / "cache", str(folder), 64, fingerprint=first.fingerprint).path == old.path


def test_adding_the_missing_tokenizer_files_changes_the_fingerprint(tmp_path):
    folder = save_tiny_t5(tmp_path / "t5")
    with_tokenizer = encoder_fingerprint(str(folder))
    (folder / "tokenizer_config.json").unlink()  # a broken copy made the cached embeddings ...
    assert encoder_fingerprint(str(folder)) != with_tokenizer  # ... under another key than the fixed one


def test_encoder_built_in_memory_is_fingerprinted_from_its_weights_and_vocabulary():
    tiny = load_text_encoder("tiny-t5")
    a = TextEncoder("mine", tiny.model, tiny.tokenizer)
    b = TextEncoder("mine", tiny.model, tiny.tokenizer)
    assert a.fingerprint == b.fingerprint != tiny.fingerprint
    changed = copy.deepcopy(tiny.model)
    with torch.no_grad():
        changed.encoder.final_layer_norm.weight[-1] += 1  # one value of one tensor, at its end
    assert TextEncoder("mine", changed, tiny.tokenizer).fingerprint != a.fingerprint


def test_name_that_cannot_be_fingerprinted_is_refused_naming_the_fix(tmp_path):
    with pytest.raises(ValueError, match="for_encoder") as info:
        EmbeddingCache(tmp_path, "someone/not-downloaded", 64)
    assert "'someone/not-downloaded'" in str(info.value) and "fingerprint=" in str(info.value)


def test_encoder_without_a_fingerprint_is_refused(tmp_path):
    encoder = FakeEncoder()
    del encoder.fingerprint
    with pytest.raises(ValueError, match="fingerprint"):
        EmbeddingCache.for_encoder(tmp_path, encoder)


# ---- warnings counted over the whole run, and a progress bar ----------------------------------------------
def test_cache_warns_once_how_many_captions_were_cut_and_which_max_length_fits_them(tmp_path):
    encoder = load_text_encoder("tiny-t5", max_length=16)  # bytes + EOS: captions over 15 bytes are cut
    captions = ["a red circle", "a big blue square on the left", "a star", "two green triangles", "a dot",
                "a small yellow circle below a star"]  # 3 of 6 are cut; the longest has 34 + 1 tokens
    cache = EmbeddingCache.for_encoder(tmp_path, encoder, batch_size=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cache.add(captions, encoder)
    messages = [str(w.message) for w in record if "max_length" in str(w.message)]
    assert len(messages) == 1  # once per run, not per batch of 2
    assert "3 of 6 captions" in messages[0] and "max_length=16" in messages[0]
    assert "max_length=35 would keep them all" in messages[0]


def test_progress_bar_only_when_asked(tmp_path, capsys):
    EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP).add(["a", "b"], FakeEncoder())
    assert capsys.readouterr().err == ""
    EmbeddingCache(tmp_path, "fake", 64, fingerprint=FP).add(["c", "d", "e"], FakeEncoder(), progress=True)
    err = capsys.readouterr().err
    assert "encoding captions (fake)" in err and "3/3" in err
