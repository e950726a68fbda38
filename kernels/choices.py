"""Where dispatch's measured choices are kept: one cache file per machine, one file per run.

* The **machine cache** (``<data root>/kernels.json``) holds, per device
  (CPU model or GPU name, torch threads, torch version), every op and shape
  class already measured: the candidates, their times and errors, the pick.
  A file that does not parse, has another format, or names other candidates
  than are registered now is ignored and rewritten, never trusted.
* The **run file** (``<run dir>/kernels.json``) records what this run chose;
  a resumed run reuses those choices so it computes what the first part did.

Both are written whole to a temporary file and renamed into place, so a crash
mid-write leaves the previous file.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

FORMAT = 1


def device_key(device: torch.device) -> str:
    """What a timing depends on: the device model, the threads that run it, torch's version."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda {torch.cuda.get_device_name(index)} sm{major}{minor} torch {torch.__version__}"
    return f"{device.type} {cpu_model()} x{torch.get_num_threads()} threads torch {torch.__version__}"


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_json(path: Path) -> dict[str, Any] | None:
    """The file's JSON object of this format, or None when it is missing, corrupt or of another format."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"format": FORMAT, **data}, indent=1, sort_keys=True))
    os.replace(temporary, path)


class MachineCache:
    """Measured choices per device and shape class, read once and rewritten on each new measurement."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = read_json(path)
        devices = data.get("devices") if data else None
        self.devices: dict[str, dict[str, Any]] = devices if isinstance(devices, dict) else {}

    def get(self, device: str, key: str, candidates: list[str], bound: float) -> dict[str, Any] | None:
        """The cached entry, if it was measured over exactly these candidates with this accuracy bound
        (else it is stale)."""
        entry = self.devices.get(device, {}).get(key)
        if not isinstance(entry, dict) or sorted(entry.get("candidates", {})) != sorted(candidates):
            return None
        if entry.get("bound") != bound:
            return None
        if entry.get("choice") not in candidates:
            return None
        return entry

    def value(self, device: str, key: str) -> Any:
        """Any other measurement kept for this device (the peak matmul rate), or None."""
        return self.devices.get(device, {}).get(key)

    def put(self, device: str, key: str, entry: dict[str, Any]) -> None:
        """Add one entry: merged into the file as it is now, under a lock, so runs sharing the data
        root do not drop each other's measurements."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = read_json(self.path)
            devices = data.get("devices") if data else None
            if isinstance(devices, dict):
                self.devices = {**devices, **{d: {**devices.get(d, {}), **e} for d, e in self.devices.items()}}
            self.devices.setdefault(device, {})[key] = entry
            write_json(self.path, {"devices": self.devices})


class RunFile:
    """This run's choices (``<run dir>/kernels.json``); on resume, the choices to reuse."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        data = read_json(path) if resume else None
        choices = data.get("choices") if data else None
        self.pinned: dict[str, str] = (
            {key: value["choice"] for key, value in choices.items() if isinstance(value, dict) and "choice" in value}
            if isinstance(choices, dict)
            else {}
        )

    def write(self, choices: dict[str, dict[str, Any]], device: str) -> None:
        write_json(self.path, {"device": device, "choices": choices})
