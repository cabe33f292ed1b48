"""Generate the Python protobuf/gRPC code for every .proto under protos/.

Usage: python scripts/gen_protos.py [OUT_DIR]   (default: libs/protos/src)
       python scripts/gen_protos.py --check     (exit 1 when the committed code drifts)
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "libs" / "protos" / "src"


def generate(out: Path) -> None:
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    scripts = Path(sysconfig.get_path("scripts"))
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Packages for every generated directory, so tools need no namespace tricks.
    for directory in {p.parent for p in out.rglob("*_pb2.py")}:
        while directory != out:
            (directory / "__init__.py").touch()
            directory = directory.parent
    (out / "agentrt" / "py.typed").touch()


def tree(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = tree(fresh), tree(TARGET)
        drift = sorted(want ^ have)
        drift += sorted(
            f for f in want & have if not filecmp.cmp(fresh / f, TARGET / f, shallow=False)
        )
    if drift:
        print("generated protobuf code is out of date; run `make protos`:", *drift, sep="\n  ")
        return 1
    print("protobuf code is up to date")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        return check()
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else TARGET
    if out == TARGET and (TARGET / "agentrt").exists():
        shutil.rmtree(TARGET / "agentrt")
    out.mkdir(parents=True, exist_ok=True)
    generate(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
