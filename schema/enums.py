"""Enums exposed in the schema."""

from __future__ import annotations

from enum import Enum

import strawberry


@strawberry.enum(
    name="Role", description="A member's role in an organisation; each includes the ones above."
)
class RoleEnum(Enum):
    """viewer < editor < admin."""

    VIEWER = strawberry.enum_value("viewer", description="Read everything in the organisation.")
    EDITOR = strawberry.enum_value(
        "editor", description="Also create, change, start and stop models and inference."
    )
    ADMIN = strawberry.enum_value(
        "admin", description="Also manage keys and see deleted resources."
    )


@strawberry.enum(name="AccessMode", description="How a model is reached.")
class AccessModeEnum(Enum):
    """REMOTE_API, LOCAL or ENGINE."""

    REMOTE_API = strawberry.enum_value(
        "REMOTE_API", description="An OpenAI-compatible API elsewhere, proxied; nothing downloaded."
    )
    LOCAL = strawberry.enum_value(
        "LOCAL", description="A Hugging Face repository downloaded to a target and served here."
    )
    ENGINE = strawberry.enum_value(
        "ENGINE",
        description=(
            "Served here by an engine that fetches the model itself (deployModel: an image and "
            "a command, or an Ollama model); nothing downloaded, READY at once."
        ),
    )


@strawberry.enum(
    name="ModelPhase",
    description=(
        "Where a model's weights stand: PENDING -> PULLING -> READY, or FAILED with a message. "
        "REMOTE_API and ENGINE models are READY at once."
    ),
)
class ModelPhaseEnum(Enum):
    """Model lifecycle phase."""

    PENDING = strawberry.enum_value("PENDING", description="Accepted; the download has not begun.")
    PULLING = strawberry.enum_value("PULLING", description="Weights are being downloaded.")
    READY = strawberry.enum_value("READY", description="Weights are in place (or not needed).")
    FAILED = strawberry.enum_value("FAILED", description="The download failed; see `message`.")


@strawberry.enum(
    name="WeightsState",
    description=(
        "Where a download stands: PENDING -> PULLING -> READY, or FAILED / CANCELLED "
        "(retryDownload resumes both)."
    ),
)
class WeightsStateEnum(Enum):
    """Download state."""

    PENDING = strawberry.enum_value("PENDING", description="Accepted, not started yet.")
    PULLING = strawberry.enum_value("PULLING", description="Bytes are moving.")
    READY = strawberry.enum_value("READY", description="Every file is in place and verified.")
    FAILED = strawberry.enum_value("FAILED", description="Stopped; `message` says why.")
    CANCELLED = strawberry.enum_value("CANCELLED", description="Stopped by cancelDownload.")


@strawberry.enum(name="DownloadStage", description="What a PULLING download is doing.")
class DownloadStageEnum(Enum):
    """Stage of a download."""

    PREFLIGHT = strawberry.enum_value(
        "PREFLIGHT", description="Checking space, access and the target."
    )
    DOWNLOADING = strawberry.enum_value("DOWNLOADING", description="Fetching bytes.")
    VERIFYING = strawberry.enum_value("VERIFYING", description="Checking hashes.")
    FINALIZING = strawberry.enum_value("FINALIZING", description="Moving files into place.")


@strawberry.enum(name="FileState", description="One file of a download.")
class FileStateEnum(Enum):
    """File state."""

    PENDING = strawberry.enum_value("PENDING", description="Not started.")
    DOWNLOADING = strawberry.enum_value("DOWNLOADING", description="Bytes are moving.")
    VERIFYING = strawberry.enum_value("VERIFYING", description="Checking its hash.")
    DONE = strawberry.enum_value("DONE", description="Verified and in place.")
    FAILED = strawberry.enum_value("FAILED", description="Failed verification or transfer.")


@strawberry.enum(name="StorageKind", description="Where a storage usage entry was measured.")
class StorageKindEnum(Enum):
    """Kinds of storage with usage figures."""

    LOCAL = strawberry.enum_value("LOCAL", description="An allowed local root, measured now.")
    PVC = strawberry.enum_value(
        "PVC", description="A PersistentVolumeClaim, as its last download pod measured it."
    )
    S3 = strawberry.enum_value(
        "S3", description="An S3 bucket prefix with a configured quota (a bucket has no size)."
    )


@strawberry.enum(
    name="InferenceEngine",
    description="What serves a model. REMOTE_API models take no engine (a gateway route).",
)
class InferenceEngineEnum(Enum):
    """Engines modelplane knows how to run."""

    VLLM = strawberry.enum_value(
        "VLLM",
        description="vLLM's OpenAI server: `vllm serve <weights> --served-model-name <name>`.",
    )
    OLLAMA = strawberry.enum_value(
        "OLLAMA",
        description=(
            "Ollama: pulls `ollamaModel` (default `hf.co/<repo>` of a LOCAL model) then serves "
            "it under the model's name; port 11434 by default."
        ),
    )
    LITELLM_PROXY = strawberry.enum_value(
        "LITELLM_PROXY",
        description="A hosted LiteLLM proxy in front of a REMOTE_API model (or your config).",
    )
    CUSTOM = strawberry.enum_value("CUSTOM", description="Your image and command.")


@strawberry.enum(
    name="InferencePhase",
    description=(
        "Where an inference stands: PENDING -> CREATING -> RUNNING; CRASH_LOOP_BACK_OFF when the "
        "engine keeps exiting; FAILED when it cannot come up without a change; STOPPED after "
        "stopInference (then no longer the model's inference). `reason` and `message` say why."
    ),
)
class InferencePhaseEnum(Enum):
    """Inference lifecycle phase."""

    PENDING = strawberry.enum_value(
        "PENDING", description="Waiting: for weights, for a GPU, for a volume; see `reason`."
    )
    CREATING = strawberry.enum_value(
        "CREATING", description="Objects or process exist; the engine is not ready yet."
    )
    RUNNING = strawberry.enum_value("RUNNING", description="Ready replicas answer requests.")
    FAILED = strawberry.enum_value(
        "FAILED", description="Will not come up as specified (image, secret, spec)."
    )
    STOPPED = strawberry.enum_value("STOPPED", description="Stopped; its objects are gone.")
    CRASH_LOOP_BACK_OFF = strawberry.enum_value(
        "CRASH_LOOP_BACK_OFF", description="The engine keeps exiting and is restarted with backoff."
    )
