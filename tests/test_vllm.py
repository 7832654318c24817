"""vLLM compatibility: the architectures table parses and is well-formed; the flags per GPU type
agree with the GPU fit over a table of models x GPU types; vllmCompatibility and
huggingFaceSearch(vllmCompatible) end to end against the local hub, refusals writing nothing."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from controllers.inference.engine_args import check_engine_args
from controllers.runtimes.inventory import GPU_CATALOGUE
from services.fitting import ENGINE_COSTS, GpuOffer, ModelShape, estimate
from services.principals import Principal
from services.vllm_flags import COMPUTE_CAPABILITY, VllmFlags, plan_flags
from services.vllm_support import TABLE_PATH, TableError, parse_table, support_table, version_key
from storage.documents import InferenceEngine, Role
from testbed.hub import LocalHub, RunningHub, running_hub
from testbed.repos import HubFile, HubRepo, shaped_repo
from tests.conftest import HUB_TOKEN, RunningApp
from tests.graphql_client import run
from tests.test_cluster_status import Cluster
from tests.test_cluster_status import _api as cluster_api
from tests.test_fit import (
    LLAMA2_7B,
    LLAMA2_7B_PARAMETERS,
    count_everything,
    create_local,
    create_remote,
)

VLLM = InferenceEngine.VLLM
GIB = 1024**3

# --------------------------------------------------------------------------- the table


def test_the_committed_table_parses_and_is_well_formed() -> None:
    table = support_table()
    names = list(table.architectures)
    assert names == sorted(names)
    for expected in (
        "LlamaForCausalLM",
        "Qwen2ForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "Gemma2ForCausalLM",
        "Phi3ForCausalLM",
        "BertModel",
    ):
        assert expected in table.architectures, expected
    assert table.architectures["BertModel"].task.value == "EMBED"
    assert table.architectures["LlamaForCausalLM"].versions == ">=0.1.0"
    assert table.documentation.startswith("https://docs.vllm.ai/")
    assert all(s.startswith("https://docs.vllm.ai/en/v") for s in table.snapshots)
    latest = version_key(table.latest_checked)
    assert all(version_key(row.since) <= latest for row in table.architectures.values())
    assert str(table.checked) == "2026-12-05"
    # The file's rows are sorted by name too, so an update is a readable diff.
    text = TABLE_PATH.read_text()
    in_file = [line.split('"')[1] for line in text.splitlines() if line.startswith("name = ")]
    assert in_file == sorted(in_file)


GOOD_SOURCE = """
[source]
documentation = "https://docs.vllm.ai/en/latest/models/supported_models.html"
snapshots = ["https://docs.vllm.ai/en/v0.6.1/models/supported_models.html"]
checked = "2026-12-05"
latest_checked = "0.6.1"
"""
GOOD_ROW = """
[[architecture]]
name = "LlamaForCausalLM"
family = "Llama"
task = "GENERATE"
since = "0.1.0"
evidence = "README"
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "not TOML"),
        (GOOD_ROW, "[source] is missing"),
        (GOOD_SOURCE, "no [[architecture]] rows"),
        (GOOD_SOURCE + GOOD_ROW + GOOD_ROW, "architecture LlamaForCausalLM is listed twice"),
        (
            GOOD_SOURCE + GOOD_ROW.replace('"0.1.0"', '"0.1"'),
            "architecture LlamaForCausalLM: since '0.1' is not a release number like 0.6.4",
        ),
        (
            GOOD_SOURCE + GOOD_ROW.replace('"0.1.0"', '"0.7.0"'),
            "architecture LlamaForCausalLM: since 0.7.0 is newer than latest_checked 0.6.1",
        ),
        (
            GOOD_SOURCE + GOOD_ROW.replace("GENERATE", "DANCE"),
            "architecture LlamaForCausalLM: task must be one of GENERATE, EMBED, not 'DANCE'",
        ),
        (GOOD_SOURCE + GOOD_ROW + 'colour = "red"\n', "architecture[0]: unknown field 'colour'"),
        (GOOD_SOURCE + GOOD_ROW.replace("Llama", "Llama Model", 1), "is not a Python class"),
        (GOOD_SOURCE + GOOD_ROW.replace('"README"', '""'), "evidence must be a non-empty"),
        (GOOD_SOURCE.replace("2026-12-05", "yesterday") + GOOD_ROW, "checked must be a date"),
        (GOOD_SOURCE.replace('"https://docs', '"http://docs', 2) + GOOD_ROW, "https://"),
    ],
)
def test_a_malformed_table_is_refused_naming_the_row_and_field(text: str, message: str) -> None:
    with pytest.raises(TableError) as refused:
        parse_table(text)
    assert message in str(refused.value)
    assert parse_table(GOOD_SOURCE + GOOD_ROW).find(["X", "LlamaForCausalLM"]) is not None


# --------------------------------------------------------------------------- flags vs fit


def catalogue() -> list[GpuOffer]:
    return [GpuOffer(p.name, p.memory_bytes) for p in GPU_CATALOGUE]


QWEN2_7B: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "torch_dtype": "bfloat16",
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
}
LLAMA3_70B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "torch_dtype": "bfloat16",
    "hidden_size": 8192,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
}
MODELS: dict[str, tuple[dict[str, Any], dict[str, int]]] = {
    "llama-2-7b bf16": ({**LLAMA2_7B}, {"BF16": LLAMA2_7B_PARAMETERS}),
    "qwen2-7b bf16 32k": (QWEN2_7B, {"BF16": 7_615_616_512}),
    "llama-3-70b bf16 128k": (LLAMA3_70B, {"BF16": 70_553_706_496}),
    "llama-2-7b f32": ({**LLAMA2_7B, "torch_dtype": "float32"}, {"F32": LLAMA2_7B_PARAMETERS}),
    "qwen2-7b awq": (
        {**QWEN2_7B, "torch_dtype": "float16", "quantization_config": {"quant_method": "awq"}},
        {"I32": 900_000_000, "F16": 1_200_000_000},
    ),
    "llama-3-70b fp8": (
        {**LLAMA3_70B, "quantization_config": {"quant_method": "fp8"}},
        {"F8_E4M3": 68_000_000_000, "BF16": 2_500_000_000},
    ),
    "no kv facts": ({"architectures": ["LlamaForCausalLM"]}, {"BF16": 1_000_000_000}),
}


def shape_of(name: str) -> tuple[ModelShape, dict[str, Any]]:
    config, params = MODELS[name]
    return ModelShape.from_config(config, parameters_by_dtype=params), config


def fits_on(shape: ModelShape, offer: GpuOffer, context: int, gpus: int) -> bool:
    """What gpuFit says for that context on that GPU type: fits on at most ``gpus``."""
    row = estimate(shape, engine=VLLM, offers=[offer], context_length=context).rows[0]
    return row.gpus_needed is not None and row.gpus_needed <= gpus


@pytest.mark.parametrize(
    ("model", "gpu"), list(itertools.product(MODELS, [p.name for p in GPU_CATALOGUE]))
)
def test_the_flags_agree_with_the_gpu_fit(model: str, gpu: str) -> None:
    shape, config = shape_of(model)
    offers = catalogue()
    offer = next(o for o in offers if o.gpu_type == gpu)
    fit = estimate(shape, engine=VLLM, offers=offers)  # what gpuFit answers for VLLM
    row = next(r for r in fit.rows if r.gpu_type == gpu)
    plan = plan_flags(shape, offers=offers, config=config)
    assert [f.gpu_type for f in plan.flags] == [r.gpu_type for r in fit.rows]
    flags = next(f for f in plan.flags if f.gpu_type == gpu)
    assert plan.fit.rows == fit.rows
    assert flags.gpu_memory_utilization == ENGINE_COSTS[VLLM].utilization
    assert int(row.memory_bytes_per_gpu * flags.gpu_memory_utilization) == row.usable_bytes_per_gpu
    if row.gpus_needed is None:
        assert not flags.servable
        assert flags.reason == f"does not fit on 8 x {gpu} (gpuFit)"
        assert flags.args == ()
        return
    if not flags.servable:  # fits, but the GPU cannot run the number format
        assert flags.reason is not None
        assert "compute capability" in flags.reason
        assert COMPUTE_CAPABILITY[gpu] < (8, 0)
        return
    assert flags.tensor_parallel_size == row.gpus_needed
    length = flags.max_model_len
    assert length is not None
    assert length >= fit.context_length
    assert fits_on(shape, offer, length, row.gpus_needed)
    if shape.max_context is not None and length < shape.max_context and shape.layers:
        assert not fits_on(shape, offer, length + 1, row.gpus_needed)
    assert flags.args[:4] == (
        "--tensor-parallel-size",
        str(row.gpus_needed),
        "--max-model-len",
        str(length),
    )
    assert flags.args[-2:] == ("--gpu-memory-utilization", "0.9")
    # what startInference takes as engineArgs: the rest, which it accepts
    assert flags.engine_args == flags.args[4:]
    check_engine_args(list(flags.engine_args), engine=InferenceEngine.VLLM, replaced_by=None)


@pytest.mark.parametrize(
    ("model", "gpu", "expected"),
    [
        # 7B bf16 at its 4096 maximum: one A100, bfloat16; T4 has no bfloat16 and needs two.
        ("llama-2-7b bf16", "A100-80GB", (1, 4096, "bfloat16", None)),
        ("llama-2-7b bf16", "T4", (2, 4096, "float16", None)),
        ("llama-2-7b f32", "L4", (1, 4096, "bfloat16", None)),
        # 70B on two A100-80GB: 65.7 GiB of weights and 2 GiB overhead on each of the 72 GiB
        # usable leave 4.3 GiB, 28,126 tokens at 160 KiB per token (4 of the 8 KV heads each).
        ("llama-3-70b bf16 128k", "A100-80GB", (2, 28126, "bfloat16", None)),
        ("qwen2-7b awq", "L4", (1, 32768, None, "awq")),
        # 73 GB of FP8 + BF16 weights and 2 GiB on one H100 (76.97 GB usable): 5,557 tokens
        # at 320 KiB each.
        ("llama-3-70b fp8", "H100-80GB", (1, 5557, None, "fp8")),
        ("no kv facts", "L4", (1, 4096, "bfloat16", None)),
    ],
)
def test_flags_of_known_models(
    model: str, gpu: str, expected: tuple[int, int, str | None, str | None]
) -> None:
    shape, config = shape_of(model)
    plan = plan_flags(shape, offers=catalogue(), config=config)
    flags = next(f for f in plan.flags if f.gpu_type == gpu)
    assert (
        flags.tensor_parallel_size,
        flags.max_model_len,
        flags.dtype,
        flags.quantization,
    ) == expected


@pytest.mark.parametrize(
    ("model", "gpu", "reason"),
    [
        ("qwen2-7b awq", "V100-16GB", "awq needs compute capability 7.5; this GPU has 7.0"),
        ("llama-3-70b fp8", "T4", "fp8 needs compute capability 8.0; this GPU has 7.5"),
        ("llama-3-70b bf16 128k", "T4", "does not fit on 8 x T4 (gpuFit)"),
        ("llama-3-70b fp8", "V100-32GB", "fp8 needs compute capability 8.0; this GPU has 7.0"),
    ],
)
def test_gpus_that_cannot_run_the_format_have_a_reason(model: str, gpu: str, reason: str) -> None:
    shape, config = shape_of(model)
    flags = next(
        f for f in plan_flags(shape, offers=catalogue(), config=config).flags if f.gpu_type == gpu
    )
    assert flags == VllmFlags(gpu, None, None, None, flags.quantization, 0.9, reason)


def test_a_given_context_pins_max_model_len() -> None:
    shape, config = shape_of("llama-3-70b bf16 128k")
    plan = plan_flags(shape, offers=catalogue(), config=config, context_length=65536)
    a100 = next(f for f in plan.flags if f.gpu_type == "A100-80GB")
    assert plan.fit.context_length == 65536
    assert a100.max_model_len == 65536
    fit = estimate(shape, engine=VLLM, offers=catalogue(), context_length=65536)
    assert a100.tensor_parallel_size == next(
        r.gpus_needed for r in fit.rows if r.gpu_type == "A100-80GB"
    )


# --------------------------------------------------------------------------- over GraphQL

UNSUPPORTED_REPO = "vllm-org/toy-unsupported"
SUPPORTED_REPO = "vllm-org/llama-2-7b-shape"
AWQ_REPO = "vllm-org/llama-2-7b-awq-shape"
NO_CONFIG_REPO = "vllm-org/gguf-only"


@pytest.fixture(scope="module")
def hub() -> Iterator[RunningHub]:
    """The sample repos plus: a 7B Llama-shaped repo, the same with an AWQ quantization
    config, one of an architecture vLLM does not serve, one without config.json."""
    local_hub = LocalHub(tokens=[HUB_TOKEN])
    local_hub.add_repo(shaped_repo(SUPPORTED_REPO, config=LLAMA2_7B))
    awq = {**LLAMA2_7B, "quantization_config": {"quant_method": "awq", "bits": 4}}
    local_hub.add_repo(shaped_repo(AWQ_REPO, config=awq))
    toy = {**LLAMA2_7B, "architectures": ["TestbedToyForCausalLM"], "model_type": "toy"}
    local_hub.add_repo(shaped_repo(UNSUPPORTED_REPO, config=toy))
    gguf = HubFile.of("model-q4_0.gguf", b"GGUF" + bytes(4092))
    local_hub.add_repo(HubRepo(NO_CONFIG_REPO, (gguf,)))
    with running_hub(local_hub) as running:
        running.hub.grant(HUB_TOKEN, "gated-org/gated-model")
        yield running


async def ask(app: RunningApp, operation: str, **variables: Any) -> dict[str, Any]:
    token = app.token(role=Role.VIEWER, organization=variables.pop("organization", "org-a"))
    data = await run(app.graphql_url, operation, variables, token=token)
    result: dict[str, Any] = next(iter(data.values()))
    return result


async def test_vllm_compatibility_of_a_hub_repo_agrees_with_gpu_fit(
    running_app: RunningApp,
) -> None:
    found = await ask(running_app, "VllmCompatibility", repoId=SUPPORTED_REPO)
    assert found["__typename"] == "VllmCompatibility", found
    assert found["architectures"] == ["LlamaForCausalLM"]
    assert found["supported"] is True
    assert found["architecture"]["since"] == "0.1.0"
    assert found["versions"] == ">=0.1.0"
    assert found["quantization"] is None
    assert found["tableCheckedOn"] == "2026-12-05"
    fit = await ask(running_app, "GpuFit", repoId=SUPPORTED_REPO)
    assert fit["rows"] == [
        {**row, "freeGpus": 0, "inCluster": False, "fitsNow": False} for row in found["fit"]["rows"]
    ]
    by_type = {row["gpuType"]: row["gpusNeeded"] for row in fit["rows"]}
    assert [f["gpuType"] for f in found["flags"]] == [p.name for p in GPU_CATALOGUE]
    for flags in found["flags"]:
        assert flags["tensorParallelSize"] == by_type[flags["gpuType"]], flags
        assert flags["servable"] is True
        assert flags["maxModelLen"] == 4096  # the model's maximum fits everywhere
        assert flags["gpuMemoryUtilization"] == 0.9
    t4 = next(f for f in found["flags"] if f["gpuType"] == "T4")
    assert t4["args"] == [
        "--tensor-parallel-size",
        "2",
        "--max-model-len",
        "4096",
        "--dtype",
        "float16",
        "--gpu-memory-utilization",
        "0.9",
    ]
    assert t4["engineArgs"] == ["--dtype", "float16", "--gpu-memory-utilization", "0.9"]

    one = await ask(running_app, "VllmCompatibility", repoId=SUPPORTED_REPO, gpuType="NVIDIA-L4")
    assert [f["gpuType"] for f in one["flags"]] == ["L4"]
    assert one["flags"][0]["dtype"] == "bfloat16"
    assert one["fit"]["gpuType"] == "L4"

    awq = await ask(running_app, "VllmCompatibility", repoId=AWQ_REPO, gpuType="V100-16GB")
    assert awq["quantization"] == "awq"
    assert awq["flags"][0]["servable"] is False
    assert awq["flags"][0]["reason"] == "awq needs compute capability 7.5; this GPU has 7.0"


async def test_an_unsupported_architecture_is_an_answer_not_an_error(
    running_app: RunningApp,
) -> None:
    found = await ask(running_app, "VllmCompatibility", repoId=UNSUPPORTED_REPO)
    assert found["__typename"] == "VllmCompatibility", found
    assert found["supported"] is False
    assert found["architecture"] is None
    assert found["versions"] is None
    assert found["flags"] == []
    assert found["notes"][0].startswith(
        "TestbedToyForCausalLM: not in modelplane's table of vLLM architectures"
    )


async def test_the_service_function_other_use_cases_call(running_app: RunningApp) -> None:
    """What the catalogue calls to generate an entry: the flags of the fit's best GPU type."""
    services = running_app.resources.services
    principal = Principal(subject="t", organization_id="org-a", role=Role.VIEWER)
    found = await services.vllm.compatibility(principal, repo_id=SUPPORTED_REPO)
    assert found.supported
    assert found.fit.chosen is not None
    assert found.chosen is not None
    assert found.chosen.gpu_type == found.fit.chosen.gpu_type == "A10"
    assert found.chosen.args == (
        "--tensor-parallel-size",
        "1",
        "--max-model-len",
        "4096",
        "--dtype",
        "bfloat16",
        "--gpu-memory-utilization",
        "0.9",
    )
    unsupported = await services.vllm.compatibility(principal, repo_id=UNSUPPORTED_REPO)
    assert unsupported.chosen is None


async def test_vllm_compatibility_of_a_catalogue_model(running_app: RunningApp) -> None:
    model_id = await create_local(running_app, SUPPORTED_REPO)
    by_model = await ask(running_app, "VllmCompatibility", modelId=model_id, gpuType="L4")
    by_repo = await ask(running_app, "VllmCompatibility", repoId=SUPPORTED_REPO, gpuType="L4")
    assert by_model["__typename"] == "VllmCompatibility", by_model
    assert by_model == by_repo


WHY = {
    NO_CONFIG_REPO: "config.json could not be read: vLLM picks the architecture from its",
    "gated-org/gated-model": "config.json could not be read (a gated repo needs a token",
    "8192": "vLLM refuses a --max-model-len above the model's maximum of 4096 tokens",
}


@pytest.mark.parametrize(
    ("variables", "typename", "field"),
    [
        ({"repoId": "nobody/no-such-model"}, "NotFoundError", None),
        ({"repoId": NO_CONFIG_REPO}, "ValidationError", "repoId"),
        ({"repoId": "gated-org/gated-model"}, "ValidationError", "repoId"),
        ({"repoId": SUPPORTED_REPO, "gpuType": "Voodoo-5"}, "ValidationError", "gpuType"),
        ({"repoId": SUPPORTED_REPO, "contextLength": 8192}, "ValidationError", "contextLength"),
        ({"repoId": SUPPORTED_REPO, "contextLength": 0}, "ValidationError", "contextLength"),
        ({"repoId": SUPPORTED_REPO, "revision": "v9"}, "ValidationError", "revision"),
        ({}, "ValidationError", "modelId"),
        ({"modelId": "MODEL"}, "ValidationError", "modelId"),
        ({"modelId": "model-nope0"}, "NotFoundError", None),
        ({"modelId": "MODEL", "organization": "org-b"}, "NotFoundError", None),
    ],
)
async def test_vllm_compatibility_refusals_name_the_field_and_write_nothing(
    running_app: RunningApp, variables: dict[str, Any], typename: str, field: str | None
) -> None:
    model_id = await create_remote(running_app)  # a REMOTE_API model: nothing for vLLM
    before = await count_everything(running_app.resources.database)
    values = {k: model_id if v == "MODEL" else v for k, v in variables.items()}
    result = await ask(running_app, "VllmCompatibility", **values)
    assert result["__typename"] == typename, result
    if typename == "ValidationError":
        assert result["field"] == field
        message = result["errorMessage"]
        expected = WHY.get(str(values.get("repoId")), WHY.get(str(values.get("contextLength"))))
        assert expected is None or expected in message
    else:
        assert result["id"] == values.get("modelId", values.get("repoId"))
    assert await count_everything(running_app.resources.database) == before


async def test_the_architectures_table_over_graphql(running_app: RunningApp) -> None:
    table = await ask(running_app, "VllmArchitectures")
    names = [row["name"] for row in table["architectures"]]
    assert names == list(support_table().architectures)
    assert table["checkedOn"] == "2026-12-05"
    assert table["latestCheckedVersion"] == support_table().latest_checked


async def test_hugging_face_search_filters_on_vllm_compatibility(
    running_app: RunningApp, hub: RunningHub
) -> None:
    everything = await ask(running_app, "HuggingFaceSearch", query="vllm-org", limit=10)
    assert {i["repoId"]: i["vllmCompatible"] for i in everything["items"]} == {
        SUPPORTED_REPO: True,
        AWQ_REPO: True,
        UNSUPPORTED_REPO: False,
        NO_CONFIG_REPO: False,
    }
    preview = await ask(running_app, "HuggingFaceModel", repoId=UNSUPPORTED_REPO)
    assert preview["architecture"] == "TestbedToyForCausalLM"
    assert preview["vllmCompatible"] is False
    preview = await ask(running_app, "HuggingFaceModel", repoId=AWQ_REPO)
    assert preview["vllmCompatible"] is True
    hub.hub.log.clear()
    served = await ask(
        running_app, "HuggingFaceSearch", query="vllm-org", limit=10, vllmCompatible=True
    )
    assert sorted(i["repoId"] for i in served["items"]) == [AWQ_REPO, SUPPORTED_REPO]
    assert all(i["architecture"] == "LlamaForCausalLM" for i in served["items"])
    listings = hub.hub.log.records("/api/models")
    assert len(listings) == 1, hub.hub.log.records()  # one request, no per-repo look-up
    assert "limit=200" in listings[0].query
    assert "config=true" in listings[0].query
    others = await ask(
        running_app, "HuggingFaceSearch", query="vllm-org", limit=1, vllmCompatible=False
    )
    assert len(others["items"]) == 1
    assert others["items"][0]["repoId"] in (UNSUPPORTED_REPO, NO_CONFIG_REPO)
    refused = await ask(
        running_app, "HuggingFaceSearch", query="vllm-org", limit=0, vllmCompatible=True
    )
    assert refused["__typename"] == "ValidationError"
    assert refused["field"] == "limit"


@pytest.fixture
async def cluster(kube_app: RunningApp, kube_namespace: str) -> AsyncIterator[Cluster]:
    made = Cluster(cluster_api(kube_app), kube_namespace)
    try:
        yield made
    finally:
        await made.remove()


async def test_flags_for_the_gpu_types_of_a_kubernetes_cluster(
    kube_app: RunningApp, cluster: Cluster
) -> None:
    """Product labels of GPU feature discovery name the rows; their compute capability comes
    from the catalogue product they match (T4: no bfloat16)."""
    await cluster.node("t4", gpus=2, product="Tesla-T4")
    await cluster.node("a100", gpus=1, product="NVIDIA-A100-SXM4-80GB", memory_mib=81920)
    found = await ask(kube_app, "VllmCompatibility", repoId=SUPPORTED_REPO)
    fit = await ask(kube_app, "GpuFit", repoId=SUPPORTED_REPO)
    assert found["__typename"] == "VllmCompatibility", found
    flags = {f["gpuType"]: f for f in found["flags"]}
    rows = {row["gpuType"]: row["gpusNeeded"] for row in fit["rows"]}
    assert set(flags) == set(rows) >= {"Tesla-T4", "NVIDIA-A100-SXM4-80GB"}
    assert all(f["tensorParallelSize"] == rows[t] for t, f in flags.items())
    assert (flags["Tesla-T4"]["tensorParallelSize"], flags["Tesla-T4"]["dtype"]) == (2, "float16")
    a100 = flags["NVIDIA-A100-SXM4-80GB"]
    assert (a100["tensorParallelSize"], a100["dtype"]) == (1, "bfloat16")
    assert found["fit"]["gpuType"] == fit["gpuType"] == "NVIDIA-A100-SXM4-80GB"
