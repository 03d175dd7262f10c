"""Greedy exactness across tokenizer *kinds*: any draft kind with any target kind.

Six kinds of tokenizer are built here in milliseconds from one small built-in corpus, each paired with a tiny
random-weight causal LM (no downloads):

* ``gpt2``     byte-level BPE, GPT-2 style (ByteLevel pre-tokenizer and decoder), nothing added to prompts
* ``llama3``   byte-level BPE behind Llama 3's split regex (Split, then ByteLevel(use_regex=False)), BOS added
* ``spm_bpe``  Llama 2 / Mistral / Gemma style: Metaspace(prepend_scheme="first"), BPE with byte fallback and the
               256 ``<0xNN>`` tokens, decoders Replace("▁", " "), ByteFallback, Fuse, Strip; BOS added
* ``unigram``  Metaspace Unigram (T5 style) without byte fallback: characters it never saw become ``<unk>``
* ``nfkc``     byte-level BPE behind an NFKC + Lowercase normalizer, with a dummy-prefix space (add_prefix_space)
* ``added``    byte-level BPE with added special tokens (``<|sep|>``, ``<|im_start|>``) and ordinary added tokens
               (``<tool_call>``, ``"    return"``) that prompts spell as literal text

Random weights make random tokens, which is the point: the targets write arbitrary byte pieces, half characters,
``<unk>``, added and special tokens, and the drafts propose them. Two temperaments per kind: "wild" models
(large weights) write a different token nearly every step; "loopy" models (small weights) soon repeat one
character, which the other kinds' loopy models tend to repeat as well, so their proposals get accepted and the
multi-token accept, bonus and resynchronisation paths run too. The wild targets also write their special
tokens now and then (:class:`WritesSpecialTokens`). Targets run in float64 so that batched verification and
one-token decoding cannot differ by a rounding tie; drafts run in float32.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import pytest
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from tokentiming import TokenTimingDecoder, autoregressive

torch.set_num_threads(1)

CORPUS = """\
def fibonacci(n):
    \"\"\"Return the n-th Fibonacci number.\"\"\"
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Stack:
\tdef __init__(self):
\t\tself.items = []

\tdef push(self, item):
\t\tself.items.append(item)


if __name__ == "__main__":
    print(fibonacci(10))   # 55
    x  =   [1, 2, 3]
    result = {"key": "value", "n": 42}

The quick brown fox jumps over the lazy dog. To be, or not to be, that is the question.
It was the best of times, it was the worst of times; it was the age of wisdom.
Hello, world! Hello again, world. Goodbye, world...

    indented    with    runs     of      spaces
\t\ttabs\tand\ttabs
line one\r\nline two\r\n\n\n
Emoji: 😀 🎉 👍 🙂 and a family 👨\u200d👩\u200d👧 in text.
中文字符和 Python 代码。你好，世界！日本語のテキスト。
مرحبا بالعالم. هذا نص عربي قصير.
naïve café ü ß → ½ ﬁ
"""

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


# -- the tokenizers -------------------------------------------------------------------------------------
def _wrap(tok: Tokenizer, **special) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **special)


def _train_bpe(tok: Tokenizer, vocab_size: int, specials: list[str], **options) -> None:
    options.setdefault("initial_alphabet", pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                          show_progress=False, **options))


def _bos_first(tok: Tokenizer, bos: str) -> processors.TemplateProcessing:
    return processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                         special_tokens=[(bos, tok.token_to_id(bos))])


def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    _train_bpe(tok, 420, ["<|endoftext|>"])
    return _wrap(tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def llama3_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    _train_bpe(tok, 400, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    tok.post_processor = _bos_first(tok, "<|begin_of_text|>")
    return _wrap(tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                 additional_special_tokens=["<|eot_id|>"])


def spm_bpe_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    # An alphabet of ASCII and two accented letters: emoji, CJK, Arabic, Hebrew are written in <0xNN> tokens.
    alphabet = sorted({c for c in CORPUS.replace(" ", "▁") if ord(c) < 128 or c in "▁éü"})
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    # Listing the byte tokens as trainer specials gives them ids 3..258 (Llama's layout); they are then made
    # ordinary vocabulary entries, so they decode through ByteFallback.
    _train_bpe(tok, 520, ["<unk>", "<s>", "</s>", *BYTE_TOKENS], initial_alphabet=alphabet,
               limit_alphabet=len(alphabet))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    state = json.loads(tok.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] not in BYTE_TOKENS]
    tok = Tokenizer.from_str(json.dumps(state))
    assert [tok.token_to_id(t) for t in BYTE_TOKENS] == list(range(3, 259))
    tok.post_processor = _bos_first(tok, "<s>")
    return _wrap(tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def unigram_tokenizer() -> PreTrainedTokenizerFast:
    """T5 style. The Unigram trainer breaks ties differently from run to run, so the vocabulary is built here
    instead: every character of the corpus and its most frequent word pieces, scored by log frequency."""
    words = Counter("▁" + word for word in CORPUS.replace("\n", " \n ").split(" ") if word)
    pieces = Counter()
    for word, count in words.items():
        for length in range(1, 7):
            for start in range(len(word) - length + 1):
                pieces[word[start:start + length]] += count
    chars = sorted(piece for piece in pieces if len(piece) == 1)
    longer = sorted((piece for piece in pieces if len(piece) > 1), key=lambda p: (-pieces[p] * len(p), p))[:160]
    total = sum(pieces.values())
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [
        (piece, math.log(pieces[piece] / total)) for piece in chars + longer]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    return _wrap(tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def nfkc_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    _train_bpe(tok, 380, ["<s>", "</s>"])
    return _wrap(tok, bos_token="<s>", eos_token="</s>")


def added_tokens_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    _train_bpe(tok, 360, ["<|endoftext|>"])
    tokenizer = _wrap(tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                      additional_special_tokens=["<|sep|>", "<|im_start|>"])
    tokenizer.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                          AddedToken("    return", special=False, normalized=False)])
    return tokenizer


TOKENIZERS = {"gpt2": gpt2_tokenizer, "llama3": llama3_tokenizer, "spm_bpe": spm_bpe_tokenizer,
              "unigram": unigram_tokenizer, "nfkc": nfkc_tokenizer, "added": added_tokens_tokenizer}
KINDS = list(TOKENIZERS)
#: The architecture of each kind's models.
ARCHITECTURES = {"gpt2": "gpt2", "llama3": "llama", "spm_bpe": "mistral", "unigram": "gpt2", "nfkc": "llama",
                 "added": "qwen2"}


# -- the models -----------------------------------------------------------------------------------------
def tiny_model(tokenizer, architecture: str, initializer_range: float, seed: int):
    from transformers import (GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                              MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    torch.manual_seed(seed)
    # No pad id in the configs: the targets write pad tokens on purpose, and transformers would warn about them.
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=None)
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=48, n_layer=1, n_head=4, n_positions=1024,
                                           initializer_range=initializer_range, resid_pdrop=0.0, embd_pdrop=0.0,
                                           attn_pdrop=0.0, **ids))
    else:
        config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM),
                                     "mistral": (MistralConfig, MistralForCausalLM),
                                     "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[architecture]
        model = model_class(config_class(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                         initializer_range=initializer_range, tie_word_embeddings=True, **ids))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id, do_sample=False)
    return model.eval()


class WritesSpecialTokens(torch.nn.Module):
    """A target that now and then writes one of its tokenizer's special tokens (never its EOS) mid-text.

    After an ordinary input token whose id is a multiple of ``every`` the next token is forced to a special
    token picked by that id. The rule looks at one input token only, so a batched verification pass and
    one-token decoding agree on it, wherever the KV cache stands."""

    def __init__(self, model, special_ids, every: int = 9):
        super().__init__()
        self.model, self.every = model, every
        self.special = sorted(special_ids)
        self.blocked = torch.tensor(self.special + [model.config.eos_token_id])
        self.config, self.generation_config = model.config, model.generation_config

    def forward(self, input_ids, **kwargs):
        output = self.model(input_ids, **kwargs)
        logits = output.logits
        inputs = input_ids[:, input_ids.shape[1] - logits.shape[1]:]
        for row, position in ((inputs % self.every == 0) & ~torch.isin(inputs, self.blocked)).nonzero().tolist():
            token = int(inputs[row, position])
            logits[row, position] = -1e4
            logits[row, position, self.special[token // self.every % len(self.special)]] = 1e4
        return output

    def get_output_embeddings(self):  # the vocabulary-intersection rule reads the width of the logits
        return self.model.get_output_embeddings()


class Writes(torch.nn.Module):
    """A target that writes ``after[last token]``, or ``otherwise``, at every step (whatever the cache holds)."""

    def __init__(self, model, after: dict[int, int], otherwise: int):
        super().__init__()
        self.model, self.after, self.otherwise = model, after, otherwise
        self.config, self.generation_config = model.config, model.generation_config

    def forward(self, input_ids, **kwargs):
        output = self.model(input_ids, **kwargs)
        logits = output.logits
        inputs = input_ids[:, input_ids.shape[1] - logits.shape[1]:].tolist()
        logits[...] = -1e4
        for row, tokens in enumerate(inputs):
            for position, token in enumerate(tokens):
                logits[row, position, self.after.get(token, self.otherwise)] = 1e4
        return output


@dataclass
class Kind:
    tokenizer: PreTrainedTokenizerFast
    targets: dict  # temperament -> float64 model
    drafts: dict  # temperament -> float32 model (the same weights)


TEMPERAMENTS = {"wild": 0.3, "loopy": 0.02}


@pytest.fixture(scope="module")
def kinds() -> dict[str, Kind]:
    built = {}
    for seed, (name, make) in enumerate(TOKENIZERS.items()):
        tokenizer = make()
        targets, drafts = {}, {}
        for temperament, initializer_range in TEMPERAMENTS.items():
            drafts[temperament] = tiny_model(tokenizer, ARCHITECTURES[name], initializer_range, seed)
            target = copy.deepcopy(drafts[temperament]).double()
            writable = set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}
            targets[temperament] = WritesSpecialTokens(target, writable) if temperament == "wild" and writable \
                else target
        built[name] = Kind(tokenizer, targets, drafts)
    return built


# -- prompts and references -----------------------------------------------------------------------------
#: (prompt, temperament, generate options). Each prompt mixes several hazards; drafts of 1 (adaptive, the
#: default: a random draft is never sure) to 3 tokens, and the vocabulary-intersection rule once.
CASES = [
    ("def parse(text: str) -> dict:\n    result = {}\n    for line in text.splitlines():\n", "wild", {}),
    ("x =     1\n\n\n    y  =  2\t\t\r\n        ", "wild", dict(adaptive=False, num_draft_tokens=3)),
    (" Family 👨\u200d👩\u200d👧\u200d👦, thumbs 👍🏽, flag 🇯🇵, ＦＵＬＬ width ﬁle Ⅻ Café ", "wild", {}),
    ("中文字符和 Python 代码。مرحبا بالعالم שלום עולם", "wild", dict(adaptive=False, num_draft_tokens=3)),
    ("a <|sep|> b <tool_call> </s> <s> <unk>    return <|endoftext|>", "wild",
     dict(adaptive=False, num_draft_tokens=3)),
    ("Emoji: 😀 🎉 and 中文 代码", "loopy", dict(adaptive=False, num_draft_tokens=2)),
    ("    return self.items[", "loopy", {}),
    ("class Stack:\n\tdef push(self, item):\n\t\t", "wild", dict(verifier="tli")),
]
MAX_NEW_TOKENS = 20


def tokens_bytes(tokenizer, family: str, token_ids: list[int]) -> bytes:
    """The bytes ``token_ids`` write after a prompt, worked out here from the pieces (an oracle for
    Generation.text): special tokens nothing, added tokens their content, byte-level pieces their bytes,
    "▁" a space and ``<0xNN>`` the byte NN."""
    special, added = set(tokenizer.all_special_ids), tokenizer.added_tokens_decoder
    data = b""
    for token_id, piece in zip(token_ids, tokenizer.convert_ids_to_tokens(token_ids)):
        if token_id in special:
            continue
        if token_id in added:
            data += added[token_id].content.encode()
        elif family == "byte_level":
            data += bytes(_BYTE_OF_CHAR[char] for char in piece)
        elif re.fullmatch(r"<0x[0-9A-F]{2}>", piece):
            data += bytes([int(piece[3:5], 16)])
        else:
            data += piece.replace("▁", " ").encode()
    return data


def _byte_of_char() -> dict[str, int]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


_BYTE_OF_CHAR = _byte_of_char()
FAMILIES = {"gpt2": "byte_level", "llama3": "byte_level", "spm_bpe": "metaspace", "unigram": "metaspace",
            "nfkc": "byte_level", "added": "byte_level"}


@pytest.fixture(scope="module")
def reference(kinds):
    """The target's own greedy output for (target kind, case index), computed once."""

    @lru_cache(maxsize=None)
    def of(target: str, case_index: int):
        kind = kinds[target]
        prompt, temperament, _ = CASES[case_index]
        return autoregressive(kind.targets[temperament], kind.tokenizer, prompt, max_new_tokens=MAX_NEW_TOKENS)

    return of


def special_texts(tokenizer) -> set[str]:
    return {token for token in tokenizer.all_special_tokens if token}


# -- greedy exactness -----------------------------------------------------------------------------------
@pytest.mark.parametrize("target", KINDS)
@pytest.mark.parametrize("draft", KINDS)
def test_greedy_output_equals_target_for_every_tokenizer_kind_pair(kinds, reference, draft, target):
    """Every case, this draft kind proposing for this target kind: the target's own greedy tokens, and
    proposals in a fair share of the rounds (so the test cannot pass by never drafting).

    The drafts run on transformers (``lean_draft=False``): the lean CPU forward computes the same draft logits up
    to rounding, whatever the tokenizer, and once numba's OpenMP pool has run, every later torch call in the
    process slows several-fold on a small loaded machine, which would blow this file's time budget."""
    draft_kind, target_kind = kinds[draft], kinds[target]
    proposed = rounds = drafted_rounds = 0
    for index, (prompt, temperament, options) in enumerate(CASES):
        decoder = TokenTimingDecoder(target_kind.targets[temperament], target_kind.tokenizer,
                                     draft_kind.drafts[temperament], draft_kind.tokenizer, lean_draft=False)
        expected = reference(target, index)
        generation = decoder.generate(prompt, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, **options)
        assert generation.token_ids == expected.token_ids, f"case {index}: {prompt!r}"
        assert generation.text == expected.text
        assert not [s for s in special_texts(target_kind.tokenizer) if s in generation.text]
        proposed += generation.stats["proposed"]
        rounds += generation.stats["rounds"]
        drafted_rounds += sum(1 for r in generation.rounds if r.proposed)
    assert proposed > 0 and drafted_rounds >= rounds // 4, (proposed, drafted_rounds, rounds)


# -- the text of a generation ---------------------------------------------------------------------------
@pytest.mark.parametrize("target", KINDS)
def test_generation_text_never_spells_special_tokens(kinds, reference, target):
    """The wild targets write special tokens mid-text (and EOS may end a generation): none shows in the text."""
    tokenizer = kinds[target].tokenizer
    written = 0
    for index in range(len(CASES)):
        generation = reference(target, index)
        assert not [s for s in special_texts(tokenizer) if s in generation.text], generation.text
        written += sum(1 for t in generation.token_ids if t in tokenizer.all_special_ids)
    # The check bites: special tokens were written (every kind but GPT-2's, whose only one is EOS).
    assert written > 0 or set(tokenizer.all_special_ids) == {tokenizer.eos_token_id}


@pytest.mark.parametrize("target", KINDS)
def test_generation_text_is_the_text_the_target_tokens_spell(kinds, reference, target):
    """Generation.text against the pieces' own bytes, on every reference and on a target made to write the
    tokens of "中文é" (characters split across byte tokens in the byte-level and byte-fallback kinds)."""
    tokenizer = kinds[target].tokenizer
    generations = [reference(target, index) for index in range(len(CASES))]
    prompt = "x = 1"
    script = [tokenizer(prompt)["input_ids"][-1], *tokenizer.encode("中文é", add_special_tokens=False)]
    assert len(set(script)) == len(script)
    writer = Writes(kinds[target].targets["wild"], dict(zip(script, script[1:])), tokenizer.eos_token_id)
    generations.append(autoregressive(writer, tokenizer, prompt, max_new_tokens=len(script)))
    assert generations[-1].token_ids == script[1:] + [tokenizer.eos_token_id]
    for generation in generations:
        written = tokens_bytes(tokenizer, FAMILIES[target], generation.token_ids)
        assert generation.text == written.decode("utf-8", errors="replace"), generation.token_ids


#: The token writing the lone byte 0xE4 (the first of the three bytes of 中), in each kind that has one.
LEAD_BYTE_PIECES = {"gpt2": "ä", "llama3": "ä", "spm_bpe": "<0xE4>", "nfkc": "ä", "added": "ä"}


@pytest.mark.parametrize("target", list(LEAD_BYTE_PIECES))
def test_streamed_text_adds_up_to_generation_text_when_it_ends_mid_character(kinds, target):
    """The target writes a lone lead byte at every step: the text ends in an unfinished character, which the
    last round must stream (as U+FFFD, like Generation.text) instead of dropping."""
    tokenizer = kinds[target].tokenizer
    model = Writes(kinds[target].targets["wild"], {}, tokenizer.convert_tokens_to_ids(LEAD_BYTE_PIECES[target]))
    generations = [autoregressive(model, tokenizer, "x = 1", max_new_tokens=3),
                   TokenTimingDecoder(model, tokenizer, kinds["gpt2"].drafts["wild"], kinds["gpt2"].tokenizer,
                                      lean_draft=False).generate("x = 1", max_new_tokens=3)]
    for generation in generations:
        assert generation.text.endswith("\ufffd")
        assert "".join(r.new_text for r in generation.rounds) == generation.text
