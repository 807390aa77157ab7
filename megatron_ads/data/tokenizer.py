"""Tokenizers: the checkpoint's own, or a small byte-level BPE trained from text for random-init models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from megatron_ads.runtime.log import get_logger

if TYPE_CHECKING:
    from megatron_ads.config.train import ModelSpec

log = get_logger(__name__)

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<think>", "</think>"]

# A few lines of ads-domain text so a tiny tokenizer has sensible merges before any corpus exists.
SEED_TEXT = [
    "query: running shoes for women near me | ad: Lightweight trail running shoes, free shipping",
    "query: cheap flights to seattle | ad: Book flights to Seattle from $89, compare airlines",
    "query: organic coffee beans | ad: Fair-trade organic coffee beans, roasted fresh weekly",
    "<Label>good</Label> <LocationLabel>good</LocationLabel> <AdQuality>good</AdQuality>",
    "<Label>bad</Label> <Label>fair</Label> <Score>0</Score> <Score>1</Score> <Score>2</Score> <Score>3</Score>",
    "The ad matches the query category and the price intent; the landing page is relevant.",
    "The user recently searched for hiking boots, tents and camping stoves; the ad sells outdoor gear.",
    "<Query>waterproof hiking boots for men</Query> <Query>hiking boots near me</Query>",
]


def train_bpe_tokenizer(vocab_size: int, texts: Iterable[str] | None = None):
    """Train a byte-level BPE (``tokenizers``) and wrap it as a transformers fast tokenizer.

    The vocabulary never exceeds ``vocab_size`` (the model's embedding rows).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # heavy: at use
    from transformers import PreTrainedTokenizerFast  # heavy: transformers at use

    size = max(len(SPECIAL_TOKENS) + 256, min(vocab_size, 4096))
    if size > vocab_size:
        raise ValueError(f"vocab_size: a byte-level tokenizer needs at least {size} entries, the model has {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) if texts is not None else SEED_TEXT * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[1],
                                   pad_token=SPECIAL_TOKENS[2])


def load_tokenizer(directory: str | Path):
    """The tokenizer saved with a checkpoint (never remote code)."""
    from transformers import AutoTokenizer  # heavy: transformers at use

    return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)


def init_tokenizer_dir(m: "ModelSpec") -> Path | None:
    """The directory holding the init checkpoint's tokenizer (``tokenizer.json``), or None (a random init, or a
    checkpoint without one): an HF directory itself; for ``model.init=mcore``, ``tokenizer/`` of the directory
    ``model.path`` names or of the newest complete checkpoint it resolves to (a training run, its
    ``checkpoints/`` or ``latest``: the step directory carries the tokenizer)."""
    if m.init == "random":
        return None
    from megatron_ads.checkpoint.tokenizer_dir import find_tokenizer_dir  # heavy (torch): at use

    return find_tokenizer_dir(m.path, require="tokenizer.json")


def run_tokenizer(m: "ModelSpec", vocab_size: int, texts: Callable[[], Iterable[str]], save_to: Path | None):
    """A training run's tokenizer: the init checkpoint's own when it has one (``init_tokenizer_dir``: an HF
    directory, or ``tokenizer/`` of an mcore checkpoint or of a training run's newest checkpoint); else a
    byte-level BPE trained on ``texts()``, saved to ``save_to`` when given (where the run's checkpoints copy it
    from). A non-random init without a tokenizer gets a new BPE too, with a warning (its token ids are not
    the ones the weights were trained on)."""
    tok_dir = init_tokenizer_dir(m)
    if tok_dir is not None:
        return load_tokenizer(tok_dir)
    if m.init != "random":
        log.warning("model.path %s (model.init=%s) holds no tokenizer.json: training a new BPE tokenizer, "
                    "whose ids the initial weights never saw", m.path, m.init)
    tok = train_bpe_tokenizer(vocab_size, list(texts()))
    if save_to is not None:
        tok.save_pretrained(str(save_to))
    return tok
