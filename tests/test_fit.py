"""gpuFit: the pure estimator's table, the GPU catalogue, and the query end to end against the
local hub (a 7B-shaped repo whose safetensors header is real and whose data are left out)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controllers.runtimes.inventory import (
    GPU_CATALOGUE,
    gpu_product,
    parse_nvidia_smi,
    pod_gpu_request,
)
from services.fitting import (
    GIB,
    FitEstimate,
    GpuOffer,
    ModelShape,
    ShapeUnknown,
    estimate,
    kv_cache_per_gpu,
)
from storage.client import Database
from storage.documents import InferenceEngine, Role
from testbed.hub import LocalHub, RunningHub, running_hub
from testbed.repos import shaped_repo
from tests.conftest import HUB_TOKEN, RunningApp
from tests.graphql_client import run
from tests.helpers import weights_area

MIB = 1024 * 1024
LLAMA2_7B_PARAMETERS = 6_738_415_616
LLAMA2_7B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "torch_dtype": "bfloat16",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}
LLAMA3_70B: dict[str, Any] = {
    "torch_dtype": "bfloat16",
    "hidden_size": 8192,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
}
SHAPED_REPO = "shape-org/llama-2-7b-shape"


def catalogue() -> list[GpuOffer]:
    return [GpuOffer(p.name, p.memory_bytes) for p in GPU_CATALOGUE]


def rows_by_type(fit: FitEstimate) -> dict[str, int | None]:
    return {row.gpu_type: row.gpus_needed for row in fit.rows}


def llama2_7b(dtype: str = "F16", **config: Any) -> ModelShape:
    return ModelShape.from_config(
        {**LLAMA2_7B, "torch_dtype": "float16", **config},
        parameters_by_dtype={dtype: LLAMA2_7B_PARAMETERS},
    )


# --------------------------------------------------------------------------- the estimator


def test_7b_fp16_fits_one_24_gib_gpu_at_4k_context() -> None:
    fit = estimate(llama2_7b(), engine=InferenceEngine.VLLM, offers=catalogue())
    assert fit.context_length == 4096  # min(model max 4096, 4096)
    assert fit.batch_size == 1
    assert fit.need.weights == 2 * LLAMA2_7B_PARAMETERS  # 12.55 GiB (13.5 GB)
    assert fit.need.kv_cache == 2 * 32 * 32 * 128 * 4096 * 2 == 2 * GIB
    assert fit.need.overhead == 2 * GIB
    assert fit.need.total / GIB == pytest.approx(16.55, abs=0.01)
    needed = rows_by_type(fit)
    assert needed["L4"] == needed["A10G"] == needed["RTX-4090"] == 1  # 90 % of 24 GB = 20.2 GiB
    assert needed["T4"] == 2  # 13.5 GiB usable: 6.3 + 1 + 2 per GPU on two
    assert needed["A100-80GB"] == 1
    assert fit.fits
    assert fit.gpus_needed == 1
    assert not fit.fits_now  # a catalogue, not a cluster
    assert fit.summary == "needs 1 x A10 (16.6 GiB); none in the cluster"


def test_70b_bf16_needs_two_80_gb_gpus() -> None:
    shape = ModelShape.from_config(LLAMA3_70B, parameters_by_dtype={"BF16": 70_553_706_496})
    fit = estimate(shape, engine=InferenceEngine.VLLM, offers=catalogue())
    assert fit.need.weights / GIB == pytest.approx(131.4, abs=0.1)
    # GQA: 8 KV heads, 80 layers, 4096 tokens: 1.25 GiB
    assert fit.need.kv_cache == 2 * 80 * 8 * 128 * 4096 * 2
    needed = rows_by_type(fit)
    assert needed["A100-80GB"] == needed["H100-80GB"] == 2  # 65.7 + 0.6 + 2 of 72 GiB each
    assert needed["H200"] == 2  # 131.4 + 1.3 + 2 > 126.4 GiB usable of one
    assert needed["A100-40GB"] == needed["L40S"] == 4
    assert needed["L4"] == 8
    assert needed["T4"] is None  # even 8 x 13.5 GiB fall short per GPU
    assert fit.need.overhead == 2 * 2 * GIB  # for the chosen two GPUs


@pytest.mark.parametrize(
    ("engine", "weights", "overhead", "usable_fraction"),
    [
        (InferenceEngine.VLLM, 2 * LLAMA2_7B_PARAMETERS, 2 * GIB, 0.9),
        (InferenceEngine.OLLAMA, 2 * LLAMA2_7B_PARAMETERS, GIB // 2, 1.0),
        (InferenceEngine.CUSTOM, 4 * LLAMA2_7B_PARAMETERS, 3 * GIB // 2, 0.9),
    ],
)
def test_engine_constants_and_float32_checkpoints(
    engine: InferenceEngine, weights: int, overhead: int, usable_fraction: float
) -> None:
    """vLLM and Ollama serve a float32 checkpoint in half precision; CUSTOM keeps float32."""
    shape = llama2_7b("F32", torch_dtype="float32")
    fit = estimate(shape, engine=engine, offers=[GpuOffer("A100-80GB", 81920 * MIB)])
    assert fit.need.weights == weights
    assert fit.need.overhead == overhead
    assert fit.rows[0].usable_bytes_per_gpu == int(81920 * MIB * usable_fraction)
    kv_bytes = 4 if engine is InferenceEngine.CUSTOM else 2
    assert fit.need.kv_cache == 2 * 32 * 32 * 128 * 4096 * kv_bytes


def test_litellm_proxy_needs_no_gpu() -> None:
    fit = estimate(ModelShape(), engine=InferenceEngine.LITELLM_PROXY, offers=catalogue())
    assert fit.fits
    assert fit.fits_now
    assert fit.gpus_needed == 0
    assert fit.rows == ()
    assert fit.need.total == 0
    assert fit.summary == "LITELLM_PROXY proxies a remote API and needs no GPU"


def test_unknown_dtypes_count_two_bytes_and_are_noted() -> None:
    shape = ModelShape.from_config(
        {**LLAMA2_7B, "torch_dtype": "float42"}, parameters_by_dtype={"F3_WEIRD": 1000}
    )
    fit = estimate(shape, engine=InferenceEngine.VLLM, offers=catalogue())
    assert fit.need.weights == 2000
    assert fit.dtype is None
    assert "dtype 'F3_WEIRD' is unknown; assumed 2 bytes" in fit.notes
    assert "torch_dtype 'float42' is unknown; assumed 2 bytes per value" in fit.notes


@pytest.mark.parametrize(
    ("shape", "weights", "note"),
    [
        (ModelShape(parameters=1_000, torch_dtype="bfloat16"), 2_000, None),
        (ModelShape(parameters=1_000, torch_dtype="float32"), 2_000, None),  # vLLM: half
        (ModelShape(parameters=1_000, torch_dtype="float8_e4m3fn"), 1_000, None),
        (ModelShape(parameters=1_000), 2_000, "the weights' dtype is unknown"),
        (ModelShape(weight_file_bytes=12_345), 12_345, "no parameter count"),
        (ModelShape(parameters_by_dtype={"I32": 100, "F16": 10}), 420, None),  # GPTQ-packed
    ],
)
def test_weights_from_whatever_is_known(shape: ModelShape, weights: int, note: str | None) -> None:
    fit = estimate(shape, engine=InferenceEngine.VLLM, offers=catalogue())
    assert fit.need.weights == weights
    assert "layers and KV heads are unknown: the KV cache is not counted" in fit.notes
    assert fit.need.kv_cache == 0
    if note is not None:
        assert any(n.startswith(note) for n in fit.notes), fit.notes


def test_nothing_known_is_an_error() -> None:
    with pytest.raises(ShapeUnknown):
        estimate(ModelShape(), engine=InferenceEngine.VLLM, offers=catalogue())


def test_context_batch_and_kv_heads_split_over_gpus() -> None:
    shape = ModelShape.from_config(LLAMA3_70B, parameters_by_dtype={"BF16": 1})
    assert shape.head_dim == 128
    assert shape.kv_heads == 8
    assert shape.max_context == 8192
    per_token_layer = 2 * 8 * 128 * 2
    assert kv_cache_per_gpu(shape, gpus=1, context=10, batch=3, bytes_per_value=2) == (
        80 * per_token_layer * 30
    )
    # 8 KV heads over 2 GPUs: 4 each; over 16 GPUs each would still hold one.
    assert (
        kv_cache_per_gpu(shape, gpus=2, context=1, batch=1, bytes_per_value=2) == 80 * 4 * 128 * 4
    )
    assert kv_cache_per_gpu(shape, gpus=16, context=1, batch=1, bytes_per_value=2) == 80 * 128 * 4
    fit = estimate(
        shape,
        engine=InferenceEngine.VLLM,
        offers=catalogue(),
        context_length=32_768,
        batch_size=4,
    )
    assert fit.context_length == 32_768
    assert fit.batch_size == 4
    assert fit.need.kv_cache == 80 * per_token_layer * 32_768 * 4  # 40 GiB
    assert "context 32768 exceeds the model's maximum of 8192 tokens" in fit.notes


def test_multi_head_latent_attention_caches_the_latent() -> None:
    config = {
        "num_hidden_layers": 61,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "hidden_size": 7168,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "max_position_embeddings": 163840,
        "torch_dtype": "bfloat16",
    }
    shape = ModelShape.from_config(config, parameters_by_dtype={"F8_E4M3": 1})
    fit = estimate(shape, engine=InferenceEngine.VLLM, offers=catalogue())
    assert fit.need.kv_cache == 61 * (512 + 64) * 4096 * 2  # not 2 x 128 heads x 56


def test_tensor_parallel_sizes_divide_the_heads() -> None:
    """400 GiB of weights need 8 x 80 GB: vLLM can split 40 heads 8 ways but not 20 (Ollama
    splits layers, so any count works for it)."""
    shape = ModelShape(parameters_by_dtype={"BF16": 200 * GIB}, attention_heads=20)
    offer = [GpuOffer("A100-80GB", 81920 * MIB)]
    assert estimate(shape, engine=InferenceEngine.VLLM, offers=offer).rows[0].gpus_needed is None
    assert estimate(shape, engine=InferenceEngine.OLLAMA, offers=offer).rows[0].gpus_needed == 8
    assert (
        estimate(
            ModelShape(parameters_by_dtype={"BF16": 200 * GIB}, attention_heads=40),
            engine=InferenceEngine.VLLM,
            offers=offer,
        )
        .rows[0]
        .gpus_needed
        == 8
    )


def test_the_best_row_prefers_free_gpus_then_fewer_then_smaller() -> None:
    offers = [
        GpuOffer("big-busy", 80 * GIB, free_on_one_node=0, in_cluster=True),
        GpuOffer("small-free", 16 * GIB, free_on_one_node=4, in_cluster=True),
        GpuOffer("mid-free", 48 * GIB, free_on_one_node=1, in_cluster=True),
    ]
    shape = ModelShape(parameters_by_dtype={"BF16": 15 * GIB // 2})  # 15 GiB of weights
    fit = estimate(shape, engine=InferenceEngine.VLLM, offers=offers)
    assert fit.chosen is not None
    assert fit.chosen.gpu_type == "mid-free"
    assert fit.fits_now
    assert fit.summary == "needs 1 x mid-free (17.0 GiB); 1 free on the largest node"
    requested = estimate(
        shape, engine=InferenceEngine.VLLM, offers=offers, requested_type="big-busy"
    )
    assert requested.chosen is not None
    assert requested.chosen.gpu_type == "big-busy"
    assert requested.fits
    assert not requested.fits_now
    huge = ModelShape(parameters_by_dtype={"BF16": 400 * GIB})
    nothing = estimate(huge, engine=InferenceEngine.VLLM, offers=offers)
    assert not nothing.fits
    assert nothing.gpus_needed is None
    assert nothing.summary == "does not fit on 8 x big-busy (802.0 GiB on one GPU)"


@pytest.mark.parametrize(
    ("label", "name"),
    [
        ("NVIDIA-A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA-A100-PCIE-40GB", "A100-40GB"),
        ("A100", "A100-40GB"),
        ("NVIDIA-H100-80GB-HBM3", "H100-80GB"),
        ("NVIDIA-H100-NVL", "H100-NVL"),
        ("NVIDIA-L40S", "L40S"),
        ("NVIDIA-L4", "L4"),
        ("NVIDIA-A10G", "A10G"),
        ("Tesla-T4", "T4"),
        ("Tesla-V100-SXM2-16GB", "V100-16GB"),
        ("NVIDIA-GeForce-RTX-4090", "RTX-4090"),
        ("nvidia l4", "L4"),
        ("NVIDIA-B200", None),
    ],
)
def test_gpu_products_from_labels(label: str, name: str | None) -> None:
    found = gpu_product(label)
    assert (found.name if found else None) == name


def test_nvidia_smi_output_and_pod_requests() -> None:
    output = "NVIDIA A100-SXM4-80GB, 81920\nNVIDIA A100-SXM4-80GB, 81920\nNVIDIA L4, 23034\n\n"
    nodes = parse_nvidia_smi(output, host="box")
    assert [(n.gpu_type, n.allocatable, n.memory_bytes_per_gpu, n.free) for n in nodes] == [
        ("NVIDIA-A100-SXM4-80GB", 2, 81920 * MIB, 2),
        ("NVIDIA-L4", 1, 23034 * MIB, 1),
    ]
    gpu = "nvidia.com/gpu"
    spec = {
        "containers": [
            {"resources": {"requests": {gpu: "2"}, "limits": {gpu: "2"}}},
            {"resources": {"limits": {gpu: "1"}}},
            {"resources": {"requests": {"cpu": "1"}}},
        ],
        "initContainers": [{"resources": {"limits": {gpu: "4"}}}],
    }
    assert pod_gpu_request(spec) == 4
    assert pod_gpu_request({"containers": spec["containers"]}) == 3
    assert pod_gpu_request({"containers": [{}]}) == 0


# --------------------------------------------------------------------------- over GraphQL


@pytest.fixture(scope="module")
def hub() -> Iterator[RunningHub]:
    """The sample repos plus a 7B-shaped one (its header is real, its data left out)."""
    local_hub = LocalHub(tokens=[HUB_TOKEN])
    local_hub.add_repo(shaped_repo(SHAPED_REPO, config=LLAMA2_7B))
    with running_hub(local_hub) as running:
        running.hub.grant(HUB_TOKEN, "gated-org/gated-model")
        yield running


async def gpu_fit(app: RunningApp, organization: str = "org-a", **variables: Any) -> dict[str, Any]:
    data = await run(
        app.graphql_url,
        "GpuFit",
        variables,
        token=app.token(role=Role.VIEWER, organization=organization),
    )
    result: dict[str, Any] = data["gpuFit"]
    return result


async def create_local(app: RunningApp, repo: str, organization: str = "org-a") -> str:
    root = weights_area(app.resources.settings.local_roots, organization)
    data = await run(
        app.graphql_url,
        "CreateModel",
        {
            "input": {
                "source": {"url": repo, "accessMode": "LOCAL"},
                "downloadTarget": {"local": {"localPath": str(root / repo.replace("/", "--"))}},
            }
        },
        token=app.token(role=Role.EDITOR, organization=organization),
    )
    model = data["createModel"]
    assert model["__typename"] == "Model", model
    model_id: str = model["id"]
    return model_id


async def test_gpu_fit_of_a_hub_repo_reads_its_header_and_config(running_app: RunningApp) -> None:
    fit = await gpu_fit(running_app, repoId=SHAPED_REPO)
    assert fit["__typename"] == "GpuFit", fit
    assert fit["engine"] == "VLLM"
    assert fit["parameters"] == LLAMA2_7B_PARAMETERS
    assert fit["dtype"] == "BF16"
    assert fit["contextLength"] == 4096
    assert fit["batchSize"] == 1
    assert fit["requiredBytes"] == {
        "weightsBytes": 2 * LLAMA2_7B_PARAMETERS,  # BF16 tensors + F32 norms served as BF16
        "kvCacheBytes": 2 * GIB,
        "overheadBytes": 2 * GIB,
        "totalBytes": 2 * LLAMA2_7B_PARAMETERS + 4 * GIB,
    }
    # The local runtime has no GPU: every catalogue type is a row, none in the cluster.
    assert [row["gpuType"] for row in fit["rows"]] == [p.name for p in GPU_CATALOGUE]
    assert all(not row["inCluster"] and row["freeGpus"] == 0 for row in fit["rows"])
    assert {row["gpuType"]: row["gpusNeeded"] for row in fit["rows"]}["T4"] == 2
    assert fit["fits"] is True
    assert fit["fitsNow"] is False
    assert fit["gpusNeeded"] == 1
    assert fit["summary"] == "needs 1 x A10 (16.6 GiB); none in the cluster"
    assert fit["notes"] == []

    t4 = await gpu_fit(running_app, repoId=SHAPED_REPO, gpuType="Tesla-T4", contextLength=1024)
    assert t4["gpuType"] == "T4"
    assert t4["gpusNeeded"] == 2
    assert [row["gpuType"] for row in t4["rows"]] == ["T4"]
    assert t4["requiredBytes"]["kvCacheBytes"] == GIB // 2
    assert t4["requiredBytes"]["overheadBytes"] == 2 * 2 * GIB

    proxy = await gpu_fit(running_app, repoId=SHAPED_REPO, engine="LITELLM_PROXY")
    assert proxy["fits"]
    assert proxy["gpusNeeded"] == 0
    assert proxy["rows"] == []


async def test_gpu_fit_of_a_catalogue_model(running_app: RunningApp) -> None:
    model_id = await create_local(running_app, SHAPED_REPO)
    by_model = await gpu_fit(running_app, modelId=model_id, engine="OLLAMA", batchSize=2)
    by_repo = await gpu_fit(running_app, repoId=SHAPED_REPO, engine="OLLAMA", batchSize=2)
    assert by_model["__typename"] == "GpuFit", by_model
    assert by_model == by_repo
    assert by_model["requiredBytes"]["kvCacheBytes"] == 2 * 2 * GIB
    assert by_model["requiredBytes"]["overheadBytes"] == GIB // 2

    tiny_id = await create_local(running_app, "tiny-org/tiny-model")
    tiny = await gpu_fit(running_app, modelId=tiny_id, gpuType="L4")
    repo = running_app.resources.services.hub
    info = await repo.model("tiny-org/tiny-model", revision=None, token=None)
    assert tiny["parameters"] == info.parameters
    assert tiny["requiredBytes"]["weightsBytes"] == 2 * (info.parameters or 0)
    assert tiny["contextLength"] == 2048  # the tiny config's max_position_embeddings
    assert tiny["gpuType"] == "L4"
    assert tiny["gpusNeeded"] == 1


async def create_remote(app: RunningApp) -> str:
    data = await run(
        app.graphql_url,
        "CreateModel",
        {
            "input": {
                "source": {"url": "https://api.deepseek.com/v1", "accessMode": "REMOTE_API"},
                "displayName": "DeepSeek Chat",
            }
        },
        token=app.token(role=Role.EDITOR, organization="org-a"),
    )
    model_id: str = data["createModel"]["id"]
    return model_id


async def count_everything(database: Database) -> dict[str, int]:
    return {
        name: await database[name].count_documents({})
        for name in await database.list_collection_names()
    }


@pytest.mark.parametrize(
    ("variables", "typename", "field"),
    [
        ({"modelId": "MODEL", "repoId": SHAPED_REPO}, "ValidationError", "repoId"),
        ({}, "ValidationError", "modelId"),
        ({"modelId": "model-nope0"}, "NotFoundError", None),
        ({"modelId": "MODEL", "organization": "org-b"}, "NotFoundError", None),
        ({"repoId": "nobody/no-such-model"}, "NotFoundError", None),
        ({"repoId": "not a repo id"}, "ValidationError", "repoId"),
        ({"repoId": SHAPED_REPO, "revision": "v9"}, "ValidationError", "revision"),
        ({"modelId": "MODEL", "revision": "main"}, "ValidationError", "revision"),
        ({"repoId": SHAPED_REPO, "gpuType": "Voodoo-5"}, "ValidationError", "gpuType"),
        ({"repoId": SHAPED_REPO, "contextLength": 0}, "ValidationError", "contextLength"),
        ({"repoId": SHAPED_REPO, "batchSize": 0}, "ValidationError", "batchSize"),
    ],
)
async def test_gpu_fit_refusals_write_nothing(
    running_app: RunningApp, variables: dict[str, Any], typename: str, field: str | None
) -> None:
    model_id = await create_remote(running_app)  # no download writing in the background
    database = running_app.resources.database
    before = await count_everything(database)
    organization = variables.pop("organization", "org-a")
    values = {k: model_id if v == "MODEL" else v for k, v in variables.items()}
    result = await gpu_fit(running_app, organization=organization, **values)
    assert result["__typename"] == typename, result
    if typename == "ValidationError":
        assert result["field"] == field
    else:
        assert result["id"] == values.get("modelId", values.get("repoId"))
    assert await count_everything(database) == before


async def test_a_remote_api_model_is_only_proxied(running_app: RunningApp) -> None:
    model_id = await create_remote(running_app)
    refused = await gpu_fit(running_app, modelId=model_id)
    assert refused["__typename"] == "ValidationError"
    assert refused["field"] == "engine"
    proxied = await gpu_fit(running_app, modelId=model_id, engine="LITELLM_PROXY")
    assert proxied["fits"]
    assert proxied["gpusNeeded"] == 0


async def test_a_model_whose_repo_left_the_hub_uses_the_recorded_facts(
    running_app: RunningApp, hub: RunningHub
) -> None:
    model_id = await create_local(running_app, SHAPED_REPO)
    repo = hub.hub.repos.pop(SHAPED_REPO)
    try:
        fit = await gpu_fit(running_app, modelId=model_id, gpuType="A100-80GB")
    finally:
        hub.hub.add_repo(repo)
    assert fit["__typename"] == "GpuFit", fit
    assert fit["parameters"] == LLAMA2_7B_PARAMETERS
    assert fit["requiredBytes"]["weightsBytes"] == 2 * LLAMA2_7B_PARAMETERS
    assert fit["requiredBytes"]["kvCacheBytes"] == 0
    assert fit["notes"] == [
        f"the hub could not be asked ({SHAPED_REPO} was not found on the hub): recorded facts used",
        "the weights' dtype is unknown; assumed 2 bytes per parameter",
        "layers and KV heads are unknown: the KV cache is not counted",
    ]


async def test_a_gated_repo_without_a_token_is_fitted_without_its_config(
    running_app: RunningApp,
) -> None:
    fit = await gpu_fit(running_app, repoId="gated-org/gated-model", gpuType="L4")
    assert fit["__typename"] == "GpuFit", fit
    assert fit["parameters"] > 0  # the hub's safetensors summary is public metadata
    assert fit["requiredBytes"]["kvCacheBytes"] == 0
    assert fit["notes"] == [
        "config.json could not be read (a gated repo needs a token with access)",
        "layers and KV heads are unknown: the KV cache is not counted",
    ]


def test_a_multimodal_config_is_read_from_its_text_config() -> None:
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "torch_dtype": "bfloat16",
        "text_config": {
            "num_hidden_layers": 34,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "hidden_size": 2560,
            "max_position_embeddings": 131072,
        },
    }
    shape = ModelShape.from_config(config, parameters_by_dtype={"BF16": 4_300_000_000})
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (34, 4, 256)
    assert shape.torch_dtype == "bfloat16"
    fit = estimate(shape, engine=InferenceEngine.VLLM, offers=catalogue())
    assert fit.context_length == 4096
    assert fit.need.kv_cache == 2 * 34 * 4 * 256 * 4096 * 2
