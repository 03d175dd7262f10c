"""Build a tiny draft/target pair of causal LMs with genuinely different tokenizers.

    python -m tokentiming.tools.tinypair [--out assets/tiny-pair] [--steps N] [--threads N]

Both models are trained from scratch, on CPU, on the same small text (a slice
of the Python standard library plus a short embedded prose/dialogue passage),
so they write code-like text and often continue it the same way, while their
vocabularies share almost nothing token-for-token:

* ``tiny-draft``  - GPT-2 architecture (learned absolute positions), byte-level
  BPE with the "Ġ" space marker (GPT-4 style pre-split), ``<|endoftext|>`` as
  bos/eos/pad, and a ``<|user|>``/``<|assistant|>``/``<|end|>`` chat template.
* ``tiny-target`` - Llama architecture (RoPE, GQA, SwiGLU), SentencePiece-style
  BPE with the "▁" space marker, dummy-prefix space, byte fallback to
  ``<0x00>``..``<0xFF>``, ``<s>``/``</s>``/``<unk>``, and a ChatML template.

The build is standalone (no imports from the rest of the package) and
deterministic for a given Python stdlib, library versions and thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sysconfig
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

# Idiomatic, self-contained modules; a fixed list (not a directory glob) so the
# corpus does not change when a Python release adds or removes files.
STDLIB_FILES = (
    "abc.py",
    "argparse.py",
    "bisect.py",
    "calendar.py",
    "collections/__init__.py",
    "colorsys.py",
    "contextlib.py",
    "copy.py",
    "csv.py",
    "dataclasses.py",
    "enum.py",
    "fnmatch.py",
    "functools.py",
    "genericpath.py",
    "getopt.py",
    "glob.py",
    "heapq.py",
    "json/decoder.py",
    "json/encoder.py",
    "keyword.py",
    "linecache.py",
    "logging/__init__.py",
    "ntpath.py",
    "numbers.py",
    "operator.py",
    "os.py",
    "pathlib.py",
    "posixpath.py",
    "queue.py",
    "random.py",
    "reprlib.py",
    "sched.py",
    "shlex.py",
    "shutil.py",
    "stat.py",
    "string.py",
    "tempfile.py",
    "textwrap.py",
    "threading.py",
    "tokenize.py",
    "types.py",
    "weakref.py",
)

PROSE = """\
The lighthouse keeper kept two notebooks. In the first he wrote the weather:
wind from the west, rain after midnight, fog lifting by nine. In the second he
wrote everything else - the names of ships that passed, the gulls that nested
on the railing, and the small repairs that a building by the sea always needs.

When the inspector came in the spring, she read both notebooks at the kitchen
table. "You write more about the gulls than about the lamp," she said.
"The lamp never changes," he answered. "It turns, it shines, and it turns again.
The gulls are the only thing here that surprises me."

She laughed, closed the books, and wrote in her report that the light was in
good order, the keeper was careful, and the tea was excellent.
"""

DIALOGUE = (
    ("How do I read a file line by line in Python?",
     "Open it with a with-statement and iterate over the file object: "
     "for line in f: print(line.rstrip())."),
    ("What does a list comprehension look like?",
     "Like this: squares = [x * x for x in range(10)]."),
    ("How can I reverse a string?",
     "Use slicing with a negative step: text[::-1]."),
    ("What is the difference between a list and a tuple?",
     "A list is mutable, a tuple is immutable, so a tuple can be used as a dictionary key."),
    ("How do I sort a dictionary by value?",
     "Use sorted(d.items(), key=lambda item: item[1])."),
    ("Say hello in Japanese.",
     "こんにちは! 👋"),
)

# A few lines outside ASCII so both tokenizers learn some multi-byte text.
UNICODE_LINES = """\
Café, naïve, façade, jalapeño, Zürich, smörgåsbord.
Emoji: 😀 🎉 🚀 ✨ 🐍 ❤️ 👍
中文: 你好，世界。今天天气很好。
日本語: こんにちは、世界。ありがとう。
한국어: 안녕하세요 세계.
Ελληνικά: Γειά σου Κόσμε. Русский: Привет, мир.
"""

# Strings both tokenizers must round-trip exactly; several exercise leading,
# repeated and trailing whitespace and characters never seen in training.
ROUND_TRIP_CASES = (
    "",
    " ",
    "   ",
    "\n",
    "\t",
    "hello world",
    " hello",
    "  two leading spaces",
    "trailing space ",
    "tabs\tand\t\ttabs",
    "\n\nleading newlines\n",
    "def f(x):\n    return x  # comment\n\n\n",
    "class A:\n\tdef __init__(self):\n\t\tpass\r\n",
    "x  =  1;y=2\n        z = {'a': [1, 2, 3]}",
    "if a != b and c <= d: print(f\"{a!r:>10}\")",
    "emoji 😀🎉 🚀✨ and a zero-width joiner 👩‍💻",
    "中文测试，你好世界！ 日本語のテキスト。",
    "unseen: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∮ ⅋ ꙮ 🦜 \u00a0nbsp \u200b zwsp",
    "<|endoftext|> is text here, and so are <s> and </s>",
)

# Prompts for the agreement measurement: code openings as they occur in the
# corpus (no trailing space: both tokenizers would end on a bare space token).
AGREEMENT_PROMPTS = (
    "import os\n",
    "def",
    "class",
    "    def __init__(self",
    "        if not",
    "        return self.",
    "for i in range(",
    "from collections import",
    "    try:\n",
    "        raise ValueError(",
)


@dataclass(frozen=True)
class ModelSpec:
    """Shape and training schedule of one model."""

    name: str
    width: int
    layers: int
    heads: int
    vocab_size: int
    steps: int
    lr: float
    kv_heads: int = 0  # Llama only
    mlp: int = 0  # Llama only


@dataclass(frozen=True)
class BuildConfig:
    out: Path = Path("assets/tiny-pair")
    seed: int = 1234
    threads: int = 2
    # Small enough for both models to nearly memorise it within the step budget,
    # which is what makes their output code-like; with a bigger corpus the same
    # budget leaves both babbling.
    corpus_max_chars: int = 100_000
    context: int = 512
    block_size: int = 256
    batch_size: int = 16
    # GPT-2's learned positions are only meaningful where trained, so the last
    # part of training uses full-context windows (same tokens per step).
    long_context_fraction: float = 0.2
    warmup_steps: int = 30
    draft: ModelSpec = field(default_factory=lambda: ModelSpec(
        name="tiny-draft", width=96, layers=3, heads=4, vocab_size=1280, steps=500, lr=6e-3))
    target: ModelSpec = field(default_factory=lambda: ModelSpec(
        name="tiny-target", width=192, layers=4, heads=6, kv_heads=2, mlp=576,
        vocab_size=1792, steps=320, lr=3e-3))


# --------------------------------------------------------------------------- corpus


def corpus_files(cfg: BuildConfig) -> list[Path]:
    """The standard-library modules used, in a fixed order, within the size cap."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chosen, total = [], 0
    for name in sorted(STDLIB_FILES):
        path = stdlib / name
        if not path.is_file():
            continue
        size = len(path.read_text(encoding="utf-8"))
        if total + size > cfg.corpus_max_chars:
            continue  # too big for what is left of the budget; a smaller module may still fit
        chosen.append(path)
        total += size
    return chosen


def build_corpus(cfg: BuildConfig) -> list[str]:
    """Documents: the chosen modules, then the prose and the non-ASCII lines."""
    return [path.read_text(encoding="utf-8") for path in corpus_files(cfg)] + [PROSE, UNICODE_LINES]


def dialogue_messages() -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        for question, answer in DIALOGUE
    ]


# --------------------------------------------------------------------------- tokenizers

DRAFT_EOS = "<|endoftext|>"
DRAFT_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DRAFT_CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
DRAFT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

TARGET_UNK, TARGET_BOS, TARGET_EOS = "<unk>", "<s>", "</s>"
TARGET_CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
TARGET_MIN_CHAR_COUNT = 5
TARGET_BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
TARGET_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_draft_tokenizer(documents: list[str], spec: ModelSpec):
    """GPT-2 style byte-level BPE."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # GPT-2's own split glues a newline to the next line's indentation
        # ("\n        " is one piece), so a prompt ending in "\n" ends on a token
        # the model hardly ever saw there. The GPT-4 style split lets a line
        # break end a piece instead.
        pre_tokenizers.Split(Regex(DRAFT_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=[DRAFT_EOS, *DRAFT_CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=DRAFT_EOS,
        eos_token=DRAFT_EOS,
        pad_token=DRAFT_EOS,
        additional_special_tokens=list(DRAFT_CHAT_TOKENS),
        # transformers turns these into the post-processor: nothing added, as in GPT-2.
        add_bos_token=False,
        add_eos_token=False,
        chat_template=DRAFT_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def common_characters(documents: list[str], min_count: int) -> list[str]:
    """Characters seen at least ``min_count`` times, in a fixed order.

    As with SentencePiece's character coverage, rarer characters (the emoji and
    CJK here) get no vocabulary entry and are spelled with byte tokens, as in Llama.
    """
    from collections import Counter

    counts = Counter("".join(documents).replace(" ", "▁"))
    return sorted(char for char, count in counts.items() if count >= min_count)


def train_target_tokenizer(documents: list[str], spec: ModelSpec):
    """SentencePiece/Llama style BPE: "▁" marker, dummy prefix, byte fallback."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=TARGET_UNK, byte_fallback=True, fuse_unk=True))
    # Metaspace skips its dummy prefix when the text already starts with a space,
    # so " x" and "x" would both become "▁x" and the decoder's Strip could not
    # tell them apart. Spelling a leading space as "▁ " makes it "▁▁x", which is
    # what SentencePiece itself produces. "\A" (not "^", which is per line in
    # Oniguruma) and normalized special tokens (below) make the normalizer see
    # the whole text, so this happens once, at the very start.
    tok.normalizer = normalizers.Replace(Regex(r"\A "), "▁ ")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False),
        # Metaspace(split=True) would cut an 8-space indent into 8 pieces; instead
        # keep a run of "▁" together and attach only its last "▁" to the next word.
        pre_tokenizers.Split(Regex("▁+(?=▁)|▁?[^▁]+|▁+"), behavior="isolated"),
    ])
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
        decoders.Strip(" ", 1, 0),  # the dummy prefix
    ])
    # Listing the byte tokens as trainer specials reserves ids 3..258 for them
    # (Llama layout); they are then demoted to ordinary vocab entries below, so
    # they decode through ByteFallback and survive skip_special_tokens.
    specials = [TARGET_UNK, TARGET_BOS, TARGET_EOS, *TARGET_BYTE_TOKENS, *TARGET_CHAT_TOKENS]
    alphabet = common_characters(documents, TARGET_MIN_CHAR_COUNT)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size, special_tokens=specials,
        initial_alphabet=alphabet, limit_alphabet=len(alphabet), show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    state = json.loads(tok.to_str())
    state["added_tokens"] = [
        {**t, "normalized": True} for t in state["added_tokens"] if t["content"] not in TARGET_BYTE_TOKENS
    ]
    tok = Tokenizer.from_str(json.dumps(state))
    assert [tok.token_to_id(t) for t in (TARGET_UNK, TARGET_BOS, TARGET_EOS)] == [0, 1, 2]
    assert [tok.token_to_id(t) for t in TARGET_BYTE_TOKENS] == list(range(3, 259))

    def special(content: str) -> AddedToken:
        return AddedToken(content, special=True, normalized=True)

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=special(TARGET_UNK),
        bos_token=special(TARGET_BOS),
        eos_token=special(TARGET_EOS),
        pad_token=special(TARGET_UNK),
        additional_special_tokens=[special(t) for t in TARGET_CHAT_TOKENS],
        # transformers turns these into the post-processor: <s> first, as in Llama.
        add_bos_token=True,
        add_eos_token=False,
        chat_template=TARGET_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def check_round_trips(tokenizer, name: str) -> None:
    for text in ROUND_TRIP_CASES:
        ids = tokenizer.encode(text, add_special_tokens=False)
        decoded = tokenizer.decode(ids)
        assert decoded == text, f"{name} round trip failed: {text!r} -> {decoded!r}"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=True, add_generation_prompt=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    assert tokenizer.decode(ids) == prompt, f"{name} chat template does not round-trip"
    unk = tokenizer.unk_token_id
    assert unk is None or unk not in tokenizer.encode("".join(ROUND_TRIP_CASES), add_special_tokens=False)


# --------------------------------------------------------------------------- models


def make_draft_model(spec: ModelSpec, tokenizer, cfg: BuildConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.context,
        n_embd=spec.width,
        n_layer=spec.layers,
        n_head=spec.heads,
        # No dropout: the models are far too small to overfit in a few hundred steps.
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # As in GPT-2: no pad id in the model config, or every input holding
        # <|endoftext|> (= pad) would trigger transformers' padding warning.
        pad_token_id=None,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


def make_target_model(spec: ModelSpec, tokenizer, cfg: BuildConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.width,
        intermediate_size=spec.mlp,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=cfg.context,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def set_generation_config(model, tokenizer) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- training


def training_text(tokenizer, documents: list[str]) -> str:
    """All documents and the chat transcripts as one text, each closed by eos so the model learns to stop.

    The special-token names in it are meant: the corpus itself never contains them.
    """
    transcripts = [tokenizer.apply_chat_template(messages, tokenize=False) for messages in dialogue_messages()]
    return "".join(text + tokenizer.eos_token for text in documents + transcripts)


def line_starts(text: str):
    """Offsets of every line start: training windows open where prompts do."""
    import torch

    offsets = [0] + [i + 1 for i, char in enumerate(text[:-1]) if char == "\n"]
    return torch.tensor(offsets, dtype=torch.long)


def sample_batch(tokenizer, text: str, starts, rows: int, length: int, generator):
    """``rows`` windows of ``length`` tokens, each the fresh encoding of text from a line start.

    Encoding each window on its own (rather than slicing one long token stream)
    gives exactly the tokens a prompt gets: the target's <s> and dummy-prefix
    space, and an ordinary word token at position 0 instead of a mid-line merge.
    """
    import torch

    rows_out: list[list[int]] = []
    while len(rows_out) < rows:
        picks = starts[torch.randint(len(starts), (rows,), generator=generator)].tolist()
        chunks = [text[p:p + 8 * length] for p in picks]
        for encoding in tokenizer.backend_tokenizer.encode_batch(chunks, add_special_tokens=True):
            if len(encoding.ids) >= length and len(rows_out) < rows:
                rows_out.append(encoding.ids[:length])
    return torch.tensor(rows_out, dtype=torch.long)


def train(model, tokenizer, text: str, spec: ModelSpec, cfg: BuildConfig) -> float:
    """AdamW with warmup + cosine decay on line-start windows; returns the final loss."""
    import math

    import torch

    generator = torch.Generator().manual_seed(cfg.seed)
    device = next(model.parameters()).device
    starts = line_starts(text)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr, betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return spec.lr * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, spec.steps - cfg.warmup_steps)
        return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    recent: list[float] = []
    started = time.perf_counter()
    for step in range(spec.steps):
        length, rows = cfg.block_size, cfg.batch_size
        if step >= spec.steps * (1 - cfg.long_context_fraction):
            length, rows = cfg.context, cfg.batch_size * cfg.block_size // cfg.context
        batch = sample_batch(tokenizer, text, starts, rows, length, generator).to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        # bf16 autocast on a GPU (the GPU benchmark trains bigger pairs there); CPU builds stay fp32 and exact.
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent = (recent + [loss.item()])[-20:]
        if step % 50 == 0 or step == spec.steps - 1:
            print(f"  [{spec.name}] step {step:4d}/{spec.steps}  loss {loss.item():.3f}"
                  f"  ({time.perf_counter() - started:.0f}s)", flush=True)
    model.eval()
    return sum(recent) / len(recent)


# --------------------------------------------------------------------------- save / verify


def save(model, tokenizer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def check_cache_crop(model, prompt_ids: list[int], steps: int = 12, rollback: int = 5) -> float:
    """Decode greedily with a DynamicCache, crop it back, continue on a different
    path, and compare every step with a full recompute; returns the max |Δlogit|."""
    import torch
    from transformers import DynamicCache

    def full_logits(ids):
        return model(input_ids=torch.tensor([ids])).logits[0, -1]

    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        ids = list(prompt_ids)
        logits = model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True).logits[0, -1]
        worst = (logits - full_logits(ids)).abs().max().item()
        for _ in range(steps):
            ids.append(int(logits.argmax()))
            logits = model(input_ids=torch.tensor([ids[-1:]]), cache=cache, use_cache=True).logits[0, -1]
            worst = max(worst, (logits - full_logits(ids)).abs().max().item())
        # Crop takes a negative count (tokens to drop) in this transformers release.
        cache.crop(-rollback)
        ids = ids[:-rollback]
        # Branch off with tokens greedy decoding would not pick, fed as one block.
        branch = [(ids[-1] + 7) % model.config.vocab_size, 3, 5]
        ids += branch
        logits = model(input_ids=torch.tensor([branch]), cache=cache, use_cache=True).logits[0, -1]
        worst = max(worst, (logits - full_logits(ids)).abs().max().item())
        for _ in range(4):
            ids.append(int(logits.argmax()))
            logits = model(input_ids=torch.tensor([ids[-1:]]), cache=cache, use_cache=True).logits[0, -1]
            worst = max(worst, (logits - full_logits(ids)).abs().max().item())
        assert cache.get_seq_length() == len(ids)
    return worst


def greedy_continuation(model, tokenizer, prompt: str, new_tokens: int = 40) -> str:
    import torch
    from transformers import DynamicCache

    ids = tokenizer.encode(prompt, add_special_tokens=True)
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    generated: list[int] = []
    with torch.no_grad():
        step_input = ids
        for _ in range(new_tokens):
            logits = model(input_ids=torch.tensor([step_input], device=device), cache=cache,
                           use_cache=True).logits[0, -1]
            token = int(logits.argmax())
            if token == tokenizer.eos_token_id:
                break
            generated.append(token)
            step_input = [token]
    text = tokenizer.decode(ids + generated, skip_special_tokens=True)
    assert text.startswith(prompt), (prompt, text)
    return text[len(prompt):]


def common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def verify(out: Path) -> None:
    """Reload everything from disk, offline, and check what downstream code relies on."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = {}
    for name in ("tiny-draft", "tiny-target"):
        folder = out / name
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        check_round_trips(tokenizer, name)
        assert model.generation_config.eos_token_id == tokenizer.eos_token_id
        worst = check_cache_crop(model, tokenizer.encode("def __init__(self, x):\n", add_special_tokens=True))
        assert worst < 1e-4, f"{name}: cached logits differ from recompute by {worst}"
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
        print(f"{name}: {type(model).__name__}, {count_parameters(model):,} params, "
              f"vocab {len(tokenizer)}, bos/eos/pad/unk = {tokenizer.bos_token_id}/"
              f"{tokenizer.eos_token_id}/{tokenizer.pad_token_id}/{tokenizer.unk_token_id}, "
              f"cache crop max |Δlogit| {worst:.2e}")
        print(f"  chat template renders: {chat!r}")
        loaded[name] = (model, tokenizer)

    print("greedy agreement (40 new tokens each; length of the common character prefix):")
    lengths = []
    for prompt in AGREEMENT_PROMPTS:
        draft_text = greedy_continuation(*loaded["tiny-draft"], prompt)
        target_text = greedy_continuation(*loaded["tiny-target"], prompt)
        lengths.append(common_prefix(draft_text, target_text))
        print(f"  {lengths[-1]:3d}  {prompt!r}\n         draft  {draft_text[:70]!r}\n         target {target_text[:70]!r}")
    print(f"common prefix: mean {statistics.mean(lengths):.1f}, median {statistics.median(lengths):.1f} chars")


# --------------------------------------------------------------------------- main


def fit(name: str, make_model, spec: ModelSpec, tokenizer, documents: list[str], cfg: BuildConfig):
    """Train one model from a fixed seed and save it with its tokenizer."""
    import torch

    text = training_text(tokenizer, documents)
    tokens = len(tokenizer.backend_tokenizer.encode(text).ids)
    print(f"{name}: vocab {len(tokenizer)}, {tokens:,} training tokens ({len(text) / tokens:.2f} chars/token)")
    torch.manual_seed(cfg.seed)
    model = make_model(spec, tokenizer, cfg)
    print(f"{name}: {type(model).__name__} with {count_parameters(model):,} parameters")
    final = train(model, tokenizer, text, spec, cfg)
    print(f"{name}: final loss {final:.3f} nats/token (mean of the last 20 steps)")
    set_generation_config(model, tokenizer)
    tokenizer.model_max_length = cfg.context
    save(model, tokenizer, cfg.out / name)
    return model


def build(cfg: BuildConfig) -> None:
    import torch

    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    documents = build_corpus(cfg)
    names = ", ".join(path.name if path.name != "__init__.py" else path.parent.name + "/__init__.py"
                      for path in corpus_files(cfg))
    print(f"corpus: {len(documents)} documents, {sum(map(len, documents)):,} chars; stdlib: {names}")
    draft_tokenizer = train_draft_tokenizer(documents, cfg.draft)
    target_tokenizer = train_target_tokenizer(documents, cfg.target)
    for name, tokenizer in (("tiny-draft", draft_tokenizer), ("tiny-target", target_tokenizer)):
        check_round_trips(tokenizer, name)
        for special in tokenizer.all_special_tokens:
            assert all(special not in doc for doc in documents), f"corpus contains {special!r}"

    fit("tiny-draft", make_draft_model, cfg.draft, draft_tokenizer, documents, cfg)
    fit("tiny-target", make_target_model, cfg.target, target_tokenizer, documents, cfg)

    verify(cfg.out)
    print(f"built in {time.perf_counter() - started:.0f}s -> {cfg.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BuildConfig.out)
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps for each model (default: per-model schedule)")
    parser.add_argument("--threads", type=int, default=BuildConfig.threads,
                        help="torch CPU threads; results are reproducible for a given count")
    args = parser.parse_args(argv)
    cfg = BuildConfig(out=args.out, threads=args.threads)
    if args.steps is not None:
        cfg = replace(cfg, draft=replace(cfg.draft, steps=args.steps),
                      target=replace(cfg.target, steps=args.steps))
    build(cfg)


if __name__ == "__main__":
    main()
