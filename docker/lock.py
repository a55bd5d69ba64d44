"""Write docker/requirements.lock from a `pip install --dry-run --report` of pathgen (see the lock's header)."""

import json
import sys
from pathlib import Path

LOCK = Path(__file__).with_name("requirements.lock")


def from_torch_index(name: str) -> bool:
    """torch, torchvision and the CUDA libraries they bring come from PyTorch's index, per CUDA flavour."""
    name = name.lower()
    return name in ("torch", "torchvision", "triton", "pathgen") or name.startswith(("nvidia-", "cuda-"))


def main(report: str) -> None:
    installs = json.loads(Path(report).read_text())["install"]
    pins = sorted((i["metadata"]["name"], i["metadata"]["version"]) for i in installs
                  if not from_torch_index(i["metadata"]["name"]))
    header = [line for line in LOCK.read_text().splitlines() if line.startswith("#")]
    LOCK.write_text("\n".join(header) + "\n" + "".join(f"{name}=={version}\n" for name, version in pins))
    print(f"{LOCK}: {len(pins)} pins")


if __name__ == "__main__":
    main(sys.argv[1])
