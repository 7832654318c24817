"""Small but real Hugging Face model repositories, built in memory for the local hub.

The public Hugging Face Hub cannot be reached from this machine, so `testbed.hub` serves
repositories built here instead. They are small, yet everything in them is real: the
safetensors files are written byte for byte in the published format (8-byte little-endian
header length, JSON header with ``__metadata__`` and ``{dtype, shape, data_offsets}`` per
tensor, padded with spaces to a multiple of 8, then the raw tensor data), the configs are
the ones a Llama-style checkpoint ships, the shard index carries the correct weight map and
``total_size``, and every identifier the hub exposes is computed the way git and git-lfs do:

* a file's git blob id is ``sha1(b"blob <len>\\0" + stored bytes)``, where the stored bytes
  of an LFS file are its LFS pointer, exactly as on the hub;
* an LFS file is identified by the sha256 of its content (the hub's ETag for it);
* a repository's commit sha is a deterministic 40-hex digest of its paths and blob ids.

Tensor contents are deterministic pseudo-random bytes (SHAKE-256 of the repo and path), so
files differ from one another, do not compress, and rebuilding the repos gives the very same
hashes. Sizes are parameters, so a download benchmark can ask for much bigger shards.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
MB = 1024 * 1024

DTYPE_SIZES: Mapping[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}

GatedMode = Literal[False, "auto", "manual"]


# --------------------------------------------------------------------------- safetensors


@dataclass(frozen=True)
class TensorSpec:
    """Name, safetensors dtype and shape of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES[self.dtype]


def safetensors_bytes(
    tensors: Sequence[TensorSpec],
    *,
    seed: str,
    metadata: Mapping[str, str] | None = None,
    header_only: bool = False,
) -> bytes:
    """Serialise ``tensors`` as a safetensors file whose data are pseudo-random bytes.

    With ``header_only`` the file stops after its header: a truncated checkpoint whose header
    (dtypes, shapes, offsets) describes tensors far larger than a test can hold. Metadata
    readers (the hub's safetensors summary, ``get_safetensors_metadata``) read it as the full
    file; loading its tensors would fail."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for tensor in tensors:
        if tensor.dtype not in DTYPE_SIZES:
            raise ValueError(f"unknown safetensors dtype {tensor.dtype!r}")
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    data = hashlib.shake_256(seed.encode()).digest(offset) if offset and not header_only else b""
    return struct.pack("<Q", len(encoded)) + encoded + data


def read_safetensors_header(data: bytes) -> dict[str, Any]:
    """Parse the JSON header at the start of a safetensors file."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: shorter than 8 bytes")
    (length,) = struct.unpack("<Q", data[:8])
    if 8 + length > len(data):
        raise ValueError("not a safetensors file: header runs past the end")
    header = json.loads(data[8 : 8 + length])
    if not isinstance(header, dict):
        raise TypeError("not a safetensors file: header is not a JSON object")
    return header


def parameter_counts(header: Mapping[str, Any]) -> dict[str, int]:
    """Number of parameters per dtype described by a safetensors header."""
    counts: dict[str, int] = {}
    for name, info in header.items():
        if name != "__metadata__":
            counts[info["dtype"]] = counts.get(info["dtype"], 0) + math.prod(info["shape"])
    return counts


# --------------------------------------------------------------------------- repositories


def git_blob_sha1(content: bytes) -> str:
    """The id git gives a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


def is_lfs_path(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size > LFS_SIZE_THRESHOLD


@dataclass(frozen=True, eq=False)
class HubFile:
    """One file of a repository; LFS files are stored in git as a pointer to their content."""

    path: str
    content: bytes = field(repr=False)
    lfs: bool

    @classmethod
    def of(cls, path: str, content: bytes) -> HubFile:
        """A file whose LFS status follows the usual ``.gitattributes`` of model repos."""
        return cls(path, content, is_lfs_path(path, len(content)))

    @property
    def size(self) -> int:
        return len(self.content)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def lfs_pointer(self) -> bytes:
        return b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n" % (
            self.sha256.encode(),
            self.size,
        )

    @cached_property
    def blob_id(self) -> str:
        """Git blob id of what git stores: the pointer for LFS files, the content otherwise."""
        return git_blob_sha1(self.lfs_pointer if self.lfs else self.content)

    @property
    def etag(self) -> str:
        """The hub's ETag (unquoted): sha256 for LFS files, git blob id otherwise."""
        return self.sha256 if self.lfs else self.blob_id


_EPOCH = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True, eq=False)
class HubRepo:
    """A model repository with a single commit, reachable as ``main`` or by its sha."""

    repo_id: str
    files: tuple[HubFile, ...]
    gated: GatedMode = False
    private: bool = False
    downloads: int = 0
    likes: int = 0
    created_at: datetime = _EPOCH
    last_modified: datetime = _EPOCH
    commit_title: str = "Upload folder using huggingface_hub"

    def __post_init__(self) -> None:
        namespace, _, name = self.repo_id.partition("/")
        if not namespace or not name or "/" in name:
            raise ValueError(f"repo_id must be 'namespace/name', got {self.repo_id!r}")
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError(f"duplicate paths in {self.repo_id}")

    @property
    def author(self) -> str:
        return self.repo_id.split("/")[0]

    @cached_property
    def by_path(self) -> dict[str, HubFile]:
        return {f.path: f for f in self.files}

    @cached_property
    def sha(self) -> str:
        listing = "".join(
            f"{f.path}\0{f.blob_id}\n" for f in sorted(self.files, key=lambda f: f.path)
        )
        digest = hashlib.sha1(f"{self.repo_id}\n{listing}".encode(), usedforsecurity=False)
        return digest.hexdigest()

    def resolve_revision(self, revision: str) -> str | None:
        """Commit sha of ``revision`` (``main`` or the full sha), None if unknown."""
        return self.sha if revision in ("main", self.sha) else None

    @cached_property
    def folders(self) -> frozenset[str]:
        found: set[str] = set()
        for f in self.files:
            parts = f.path.split("/")[:-1]
            found.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return frozenset(found)

    def tree_id(self, folder: str) -> str:
        inside = "".join(
            f"{f.path}\0{f.blob_id}\n" for f in self.files if f.path.startswith(folder + "/")
        )
        return hashlib.sha1(f"tree {folder}\n{inside}".encode(), usedforsecurity=False).hexdigest()

    @cached_property
    def card_data(self) -> dict[str, Any] | None:
        """The YAML front matter of README.md, as the hub's ``cardData``."""
        readme = self.by_path.get("README.md")
        if readme is None:
            return None
        text = readme.content.decode()
        if not text.startswith("---\n"):
            return None
        front, sep, _ = text[4:].partition("\n---")
        data = yaml.safe_load(front) if sep else None
        return data if isinstance(data, dict) else None

    def json_file(self, path: str) -> dict[str, Any] | None:
        found = self.by_path.get(path)
        if found is None:
            return None
        data = json.loads(found.content)
        return data if isinstance(data, dict) else None

    @cached_property
    def safetensors_headers(self) -> dict[str, dict[str, Any]]:
        return {
            f.path: read_safetensors_header(f.content)
            for f in self.files
            if f.path.endswith(".safetensors")
        }

    @cached_property
    def used_storage(self) -> int:
        return sum(f.size for f in self.files)


# --------------------------------------------------------------------------- sample repos


def _llama_config(hidden: int, layers: int, vocab: int) -> dict[str, Any]:
    heads = max(1, hidden // 32)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "torch_dtype": "bfloat16",
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads // 2 if heads % 2 == 0 else heads,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "transformers_version": "4.46.0",
    }


def _llama_layer(config: Mapping[str, Any], index: int) -> list[TensorSpec]:
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * (hidden // config["num_attention_heads"])
    prefix = f"model.layers.{index}"
    shapes = {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }
    specs = [TensorSpec(f"{prefix}.{name}.weight", "BF16", shape) for name, shape in shapes.items()]
    specs += [
        TensorSpec(f"{prefix}.{norm}.weight", "F32", (hidden,))
        for norm in ("input_layernorm", "post_attention_layernorm")
    ]
    return specs


def _llama_shards(config: Mapping[str, Any], num_shards: int) -> list[list[TensorSpec]]:
    """Llama tensors split over shards: the layers evenly, embeddings first, head last."""
    hidden, vocab, layers = config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]
    shards: list[list[TensorSpec]] = [[] for _ in range(num_shards)]
    shards[0].append(TensorSpec("model.embed_tokens.weight", "BF16", (vocab, hidden)))
    for index in range(layers):
        shards[index * num_shards // layers].extend(_llama_layer(config, index))
    shards[-1].append(TensorSpec("model.norm.weight", "F32", (hidden,)))
    shards[-1].append(TensorSpec("lm_head.weight", "BF16", (vocab, hidden)))
    return shards


def _hidden_for(target_bytes: int, layers: int, vocab: int) -> int:
    """Hidden size (a multiple of 32) whose checkpoint size is closest to ``target_bytes``."""

    def size(hidden: int) -> int:
        return sum(
            t.nbytes for s in _llama_shards(_llama_config(hidden, layers, vocab), 1) for t in s
        )

    hidden = 32
    while size(hidden + 32) <= target_bytes:
        hidden += 32
    return min(hidden, hidden + 32, key=lambda h: abs(size(h) - target_bytes))


def _tokenizer_files(vocab: int) -> list[HubFile]:
    specials = ["<unk>", "<s>", "</s>"]
    tokens = specials + [f"tok{i}" for i in range(vocab - len(specials))]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": tok,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, tok in enumerate(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "WordLevel",
            "vocab": {t: i for i, t in enumerate(tokens)},
            "unk_token": "<unk>",
        },
    }
    tokenizer_config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 2048,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
    }
    return [
        _json_file("tokenizer.json", tokenizer),
        _json_file("tokenizer_config.json", tokenizer_config),
    ]


def _json_file(path: str, data: object) -> HubFile:
    return HubFile.of(path, (json.dumps(data, indent=2) + "\n").encode())


def _readme(repo_id: str, card: Mapping[str, Any]) -> HubFile:
    front = yaml.safe_dump(dict(card), sort_keys=False)
    name = repo_id.split("/")[1]
    body = f"# {name}\n\nA tiny Llama-style checkpoint for tests; its weights are noise.\n"
    return HubFile.of("README.md", f"---\n{front}---\n\n{body}".encode())


def llama_repo(
    repo_id: str,
    *,
    weights_bytes: int,
    num_shards: int = 1,
    vocab: int = 512,
    gated: GatedMode = False,
    private: bool = False,
    tags: Iterable[str] = ("llama", "text-generation", "testbed"),
    downloads: int = 0,
    likes: int = 0,
) -> HubRepo:
    """A complete Llama-style repo whose weights total about ``weights_bytes``.

    With ``num_shards > 1`` the checkpoint has one decoder layer per shard, so each
    ``model-0000i-of-0000n.safetensors`` is about ``weights_bytes / num_shards``, plus
    ``model.safetensors.index.json``; otherwise a single ``model.safetensors``.
    """
    layers = max(2, num_shards)
    hidden = _hidden_for(weights_bytes, layers, vocab)
    config = _llama_config(hidden, layers, vocab)
    card = {
        "license": "apache-2.0",
        "language": ["en"],
        "pipeline_tag": "text-generation",
        "library_name": "transformers",
        "tags": list(tags),
    }
    if gated:
        card["extra_gated_prompt"] = "You agree to use this model for tests only."
    files = [
        _json_file("config.json", config),
        _json_file(
            "generation_config.json",
            {
                "_from_model_config": True,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "transformers_version": "4.46.0",
            },
        ),
        *_tokenizer_files(vocab),
        _readme(repo_id, card),
    ]
    shards = _llama_shards(config, num_shards)
    if num_shards == 1:
        files.append(
            HubFile.of("model.safetensors", safetensors_bytes(shards[0], seed=f"{repo_id}/model"))
        )
    else:
        weight_map: dict[str, str] = {}
        for i, tensors in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{num_shards:05d}.safetensors"
            files.append(HubFile.of(name, safetensors_bytes(tensors, seed=f"{repo_id}/{name}")))
            weight_map.update(dict.fromkeys((t.name for t in tensors), name))
        total = sum(t.nbytes for s in shards for t in s)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        files.append(_json_file("model.safetensors.index.json", index))
    return HubRepo(
        repo_id,
        tuple(files),
        gated=gated,
        private=private,
        downloads=downloads,
        likes=likes,
    )


def sample_repos(
    *,
    model_bytes: int = 2 * MB,
    shard_bytes: int = 2 * MB,
    num_shards: int = 3,
    gated_bytes: int = 256 * 1024,
) -> list[HubRepo]:
    """The repos the tests and demos serve.

    * ``tiny-org/tiny-model``: one ``model.safetensors`` of about ``model_bytes``;
    * ``tiny-org/sharded-model``: ``num_shards`` shards of about ``shard_bytes`` each;
    * ``gated-org/gated-model``: gated with manual approval, weights of about ``gated_bytes``.
    """
    return [
        llama_repo("tiny-org/tiny-model", weights_bytes=model_bytes, downloads=1200, likes=7),
        llama_repo(
            "tiny-org/sharded-model",
            weights_bytes=shard_bytes * num_shards,
            num_shards=num_shards,
            downloads=300,
            likes=3,
        ),
        llama_repo(
            "gated-org/gated-model", weights_bytes=gated_bytes, gated="manual", downloads=42
        ),
    ]


def shaped_repo(repo_id: str, *, config: Mapping[str, Any]) -> HubRepo:
    """A Llama-style repo of any size, say a 7B one: ``config.json`` as given and a header-only
    ``model.safetensors`` (see :func:`safetensors_bytes`) declaring the tensors the config
    implies, so the hub reports its true parameter counts while the repo stays a few KiB.
    ``config`` needs ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``num_key_value_heads`` and ``vocab_size``."""
    (tensors,) = _llama_shards(config, 1)
    files = [
        _json_file("config.json", dict(config)),
        _readme(repo_id, {"license": "apache-2.0", "pipeline_tag": "text-generation"}),
        HubFile.of(
            "model.safetensors",
            safetensors_bytes(tensors, seed=f"{repo_id}/model", header_only=True),
        ),
    ]
    return HubRepo(repo_id, tuple(files))
