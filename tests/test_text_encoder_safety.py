"""Silent failures of loading a text encoder, each turned into a clear error or one short warning
(minimagen/text_encoder_files.py and the checks in text_encoder.py).

The broken checkpoints are the tiny T5 written with save_tiny_t5 and then damaged: tokenizer files
deleted, weights truncated, a sentencepiece vocabulary instead of the byte tokenizer. A "Hub cache" is the
huggingface_hub folder layout built by hand in a temporary HF_HOME: models--org--name/refs/main holds a
commit id, snapshots/<commit>/ the files.
"""
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from minimagen.text_encoder import (TextEncoder, TextEncoderNotAvailableError, load_text_encoder,
                                    save_tiny_t5)

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("tokenizer_config.json", "added_tokens.json", "special_tokens_map.json", "tokenizer.json")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A complete tiny T5 folder (weights + byte tokenizer); tests copy it before damaging it."""
    return save_tiny_t5(tmp_path_factory.mktemp("tiny") / "tiny-t5")


def copy_of(folder: Path, to: Path, without=()) -> Path:
    shutil.copytree(folder, to)
    for name in without:
        (to / name).unlink(missing_ok=True)
    return to


def hub_cache(home: Path, folder: Path, repo="minimagen-test/tiny-t5", without=()) -> str:
    """Put `folder`'s files into a Hugging Face cache under `home` as Hub model `repo`."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    copy_of(folder, root / "snapshots" / COMMIT, without)
    return repo


def offline_hub(monkeypatch, home: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


# ---- 1. no tokenizer files / a tokenizer that does not know English ----------------------------------
def test_folder_with_weights_but_no_tokenizer_files_is_refused_naming_the_folder(tiny_dir, tmp_path):
    broken = copy_of(tiny_dir, tmp_path / "no-tokenizer", without=TOKENIZER_FILES)
    with pytest.raises(TextEncoderNotAvailableError) as info:
        load_text_encoder(str(broken))
    message = str(info.value)
    assert "is not available" in message and f"{broken} has weights but no tokenizer files" in message
    assert "<unk>" in message and "tokenizer.save_pretrained" in message


def test_hub_cache_entry_without_tokenizer_files_is_refused_offline(tiny_dir, tmp_path, monkeypatch):
    offline_hub(monkeypatch, tmp_path)
    name = hub_cache(tmp_path, tiny_dir, without=TOKENIZER_FILES)
    with pytest.raises(TextEncoderNotAvailableError, match="no tokenizer files") as info:
        load_text_encoder(name)
    assert f"hf download {name}" in str(info.value) and COMMIT in str(info.value)


def test_tokenizer_that_maps_plain_english_to_unk_is_refused(tiny_dir, tmp_path):
    from transformers import T5Tokenizer
    model = load_text_encoder(str(tiny_dir)).model
    default = T5Tokenizer()  # what transformers builds when the vocabulary is missing: every word is <unk>
    assert default("a red circle")["input_ids"].count(default.unk_token_id) == 3
    with pytest.raises(TextEncoderNotAvailableError) as info:
        TextEncoder("my-t5", model, default)
    message = str(info.value)
    assert "'my-t5'" in message and "'a red circle on the left'" in message and "'<unk>'" in message
    assert "hf download my-t5" in message


# ---- 4. spiece.model tokenizers need sentencepiece + protobuf ---------------------------------------
@pytest.fixture(scope="module")
def spiece_dir(tiny_dir, tmp_path_factory) -> Path:
    """The tiny T5's weights with a <= 40-piece sentencepiece vocabulary (spiece.model only, as google/t5-v1_1)."""
    spm = pytest.importorskip("sentencepiece")
    folder = copy_of(tiny_dir, tmp_path_factory.mktemp("spiece") / "t5", without=TOKENIZER_FILES)
    lines = ["a red circle on the left", "a blue square on the right", "two green triangles above a star"] * 20
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(folder / "sp"), vocab_size=40,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
                                   minloglevel=2)
    (folder / "sp.model").rename(folder / "spiece.model")
    (folder / "sp.vocab").unlink()
    return folder


def test_spiece_model_without_sentencepiece_and_protobuf_names_both_packages(spiece_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # None in sys.modules: importing it fails
    monkeypatch.setitem(sys.modules, "google.protobuf", None)
    with pytest.raises(TextEncoderNotAvailableError) as info:
        load_text_encoder(str(spiece_dir))
    message = str(info.value)
    assert str(spiece_dir / "spiece.model") in message and "sentencepiece and protobuf" in message
    assert "pip install sentencepiece protobuf" in message and "tiktoken" in message  # says it is not that


def test_spiece_model_only_folder_loads_with_sentencepiece_and_protobuf(spiece_dir):
    pytest.importorskip("google.protobuf")
    encoder = load_text_encoder(str(spiece_dir))
    ids = encoder.tokenizer("a red circle on the left")["input_ids"]
    assert encoder.tokenizer.unk_token_id not in ids and ids[-1] == encoder.tokenizer.eos_token_id
    embeds, mask = encoder.encode(["a red circle", "a blue square on the right"])
    assert embeds.shape[-1] == 64 and mask.sum(1).tolist() == [len(encoder.tokenizer(c)["input_ids"])
                                                               for c in ["a red circle", "a blue square on the right"]]


def test_requirements_list_sentencepiece_and_protobuf():
    names = {line.split("#")[0].strip().split(">")[0].split("=")[0].split("<")[0].lower()
             for line in (ROOT / "requirements.txt").read_text().splitlines()}
    assert {"sentencepiece", "protobuf"} <= names


# ---- 5. truncated weights ----------------------------------------------------------------------------
@pytest.mark.parametrize("cut", ["half", "all_but_5_bytes"])
def test_truncated_safetensors_names_the_file_and_how_to_get_it_again(tiny_dir, tmp_path, cut):
    broken = copy_of(tiny_dir, tmp_path / "truncated")
    weights = broken / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2 if cut == "half" else 5)
    with pytest.raises(TextEncoderNotAvailableError) as info:
        load_text_encoder(str(broken))
    message = str(info.value)
    assert f"the weight file {weights} is broken" in message
    assert "truncated" in message or "only 5 bytes" in message
    assert "save_pretrained" in message and "copy it again" in message


def test_truncated_safetensors_in_the_hub_cache_says_download_again(tiny_dir, tmp_path, monkeypatch):
    offline_hub(monkeypatch, tmp_path)
    name = hub_cache(tmp_path, tiny_dir)
    weights = tmp_path / "hub" / "models--minimagen-test--tiny-t5" / "snapshots" / COMMIT / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(TextEncoderNotAvailableError, match="truncated") as info:
        load_text_encoder(name)
    assert str(weights) in str(info.value) and f"hf download {name}" in str(info.value)


# ---- 6. captions of unknown tokens; long captions quoted short ---------------------------------------
@pytest.fixture(scope="module")
def minilm_parts():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        encoder = load_text_encoder("all-MiniLM-L6-v2")
    return encoder.model, encoder.tokenizer


def test_captions_mostly_unknown_tokens_warn_once_quoting_one_caption_cut_to_60_characters(minilm_parts):
    encoder = TextEncoder("all-MiniLM-L6-v2", *minilm_parts)  # a fresh instance: its own "warned once"
    emoji = "🐱🐶🦊 " * 30  # BERT's WordPiece has no emoji: every one is [UNK]
    with pytest.warns(UserWarning, match="mostly the unknown token") as record:
        encoder.encode(["a red circle", emoji, "🌈🌈 and 🌈"])
    message = str(record[0].message)
    assert "2 of 3 captions" in message and repr(emoji[:60] + "...") in message and len(message) < 600
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per encoder: a second warning would raise here
        encoder.encode(["🦊🦊🦊"])


def test_plain_and_partly_foreign_captions_do_not_warn(minilm_parts):
    encoder = TextEncoder("all-MiniLM-L6-v2", *minilm_parts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode(["a red circle", "a cat 🐱 on a big blue square"])  # 1 unknown of 8 word pieces


def test_truncation_warning_quotes_a_2000_word_caption_in_60_characters():
    encoder = load_text_encoder("tiny-t5", max_length=8)
    prompt = " ".join(f"word{i}" for i in range(2000))  # ~14 KB
    with pytest.warns(UserWarning, match="max_length=8") as record:
        encoder.encode([prompt])
    message = str(record[0].message)
    assert repr(prompt[:60] + "...") in message and len(message) < 600


# ---- 8. a complete cached copy is loaded without asking the network ----------------------------------
def test_complete_hub_cache_entry_loads_online_without_any_network_request(tiny_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read at its import: online now
    lookups, waits = [], []

    def no_network(host, *args, **kwargs):  # every connection starts with a name lookup
        lookups.append(host)
        raise socket.gaierror(-2, "Name or service not known (no network in this test)")
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(time, "sleep", waits.append)  # huggingface_hub's back-off between retries
    name = hub_cache(tmp_path, tiny_dir)
    encoder = load_text_encoder(name)
    # before the fix: 30 failed lookups and 5 x 23 s of back-off before the cached copy was used. The one
    # lookup allowed is huggingface_hub's user-agent registry (once per process, 3 s timeout, no retry).
    assert waits == [] and len(lookups) <= 1
    assert encoder.encode(["a red circle"])[1].sum() == len(b"a red circle") + 1


# ---- 10. no stray progress bars ----------------------------------------------------------------------
def test_loading_prints_no_progress_bars_and_restores_the_switch(tiny_dir, capfd):
    from transformers.utils import logging as hf_logging
    before = hf_logging.is_progress_bar_enabled()
    load_text_encoder(str(tiny_dir))
    load_text_encoder("all-MiniLM-L6-v2")
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err and err == ""
    assert hf_logging.is_progress_bar_enabled() == before


def test_half_precision_and_float32_encoders_have_different_fingerprints(tiny_dir):
    assert (load_text_encoder(str(tiny_dir)).fingerprint
            != load_text_encoder(str(tiny_dir), torch_dtype=torch.bfloat16).fingerprint)
