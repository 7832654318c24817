"""The local runtime's parts: in-process download workers, supervised engine processes,
secrets encrypted in MongoDB with the secret key.

The process supervisor is built before the inference controller that listens to it, so its
change reports go through a forwarder (:class:`Forward`) that :meth:`LocalParts.attach` points
at the controller."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from pathlib import Path

from controllers.downloads.executions import Executor
from controllers.inference.reconciler import (
    InferenceController,
    InferenceExecutor,
    LocalInferenceExecutor,
)
from controllers.runtimes.base import LocalRuntime
from controllers.runtimes.local.processes import (
    EngineUser,
    EngineUserError,
    ProcessSupervisor,
    engine_user,
    protect_server_process,
)
from controllers.runtimes.secrets import EncryptedSecretStore, SecretStore, fernet_for
from modelplane.keyfiles import read_or_create
from modelplane.settings import Settings
from modelplane.startup import StartupError
from storage.client import Database
from storage.repositories import SecretRepository

log = logging.getLogger(__name__)


class LocalParts:
    """Everything the local runtime does differently; see
    :class:`~modelplane.runtimes.base.RuntimeParts`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._runtime = LocalRuntime(state_dir=settings.state_dir.resolve())
        self._notify = Forward()

    @property
    def runtime(self) -> LocalRuntime:
        return self._runtime

    @property
    def namespace(self) -> str | None:
        return None

    def prepare(self) -> None:
        for root in self._settings.local_roots:
            root.mkdir(parents=True, exist_ok=True)

    def secret_store(self, database: Database) -> SecretStore:
        settings = self._settings
        if settings.secret_key is not None:
            key = settings.secret_key.get_secret_value()
        else:
            key = generated_secret(settings.state_dir)
        return EncryptedSecretStore(SecretRepository(database), cipher=fernet_for(key))

    def download_executor(self) -> Executor | None:
        return None  # the download controller's own in-process workers

    def inference_executor(self) -> InferenceExecutor:
        settings = self._settings
        return LocalInferenceExecutor(
            supervisor=ProcessSupervisor(
                log_dir=(settings.state_dir / "engines" / "logs").resolve(),
                on_change=self._notify,
                backoff_max=settings.engine_restart_max_seconds,
                run_as=_engine_user(settings),
            ),
            work_dir=(settings.state_dir / "engines").resolve(),
        )

    def attach(self, controller: InferenceController) -> None:
        self._notify.target = controller.notify


class Forward:
    """Calls the controller's notify once it exists (the supervisor is built first)."""

    def __init__(self) -> None:
        self.target: Callable[[str], None] | None = None

    def __call__(self, key: str) -> None:
        if self.target is not None:
            self.target(key)


def generated_secret(state_dir: Path) -> str:
    """Development only: a secret key generated once and kept in the state directory's
    key directory (mode 0700, the file 0600: see :mod:`modelplane.keyfiles`)."""
    return (
        read_or_create(state_dir, "secret-key", lambda: secrets.token_urlsafe(48).encode())
        .decode()
        .strip()
    )


def _engine_user(settings: Settings) -> EngineUser | None:
    """Who local engines run as (see :mod:`controllers.runtimes.local.processes`); protects this
    process's environment and memory from same-user engines; says what it decided."""
    try:
        user = engine_user(settings.engine_user)
    except EngineUserError as exc:
        raise StartupError(f"MODELPLANE_ENGINE_USER: {exc}") from None
    protected = protect_server_process()
    if user is not None:
        log.info("local engines run as another user", extra={"engine_user": user.name})
    elif settings.allow_host_commands:
        log.warning(
            "local engines run as the server's own user: a command an admin starts can read "
            "what the server's user can (key files in the state directory among them)",
            extra={"server_dumpable": not protected},
        )
    return user
