"""Generate the gRPC stubs from ``protos/`` into the ``coffeeping`` package of coffeeping-common.

    python deploy/gen_protos.py            # (re)generate
    python deploy/gen_protos.py --check    # exit 1 when the generated code differs from protos/

Protos sit at their package path (``protos/coffeeping/vault/v1/vault.proto``) so the generated
imports are package-qualified (``from coffeeping.vault.v1 import vault_pb2``).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from google.api import field_behavior_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "libs" / "coffeeping-common" / "src"
# Only these top-level folders under coffeeping/ are generated; coffeeping/common is hand-written.
GENERATED = ("accounts", "vault", "mailer", "watcher", "types", "events")


def generate(out: Path) -> None:
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    # google/api/*.proto (field_behavior) ship with googleapis-common-protos, whose generated modules
    # the stubs import at run time; its .proto files sit next to them.
    googleapis = Path(field_behavior_pb2.__file__).parents[2]
    args = ["grpc_tools.protoc", f"-I{PROTOS}", f"-I{include}", f"-I{googleapis}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for folder in {p.parent for p in out.rglob("*_pb2.py")}:
        current = folder
        while current != out:
            init = current / "__init__.py"
            if not init.exists() and current.name != "common":
                init.write_text("")
            current = current.parent


def _tree(base: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(base)): p
        for name in GENERATED
        for p in (base / "coffeeping" / name).rglob("*")
        if p.is_file() and p.suffix in (".py", ".pyi")
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "coffeeping").mkdir()
        generate(out)
        fresh = _tree(out)
        if args.check:
            current = _tree(TARGET)
            drift = sorted(set(fresh) ^ set(current))
            drift += sorted(k for k in set(fresh) & set(current) if not filecmp.cmp(fresh[k], current[k], False))
            if drift:
                print("generated stubs differ from protos/: " + ", ".join(drift), file=sys.stderr)
                print("run: python deploy/gen_protos.py", file=sys.stderr)
                return 1
            print("generated stubs match protos/")
            return 0
        for name in GENERATED:
            shutil.rmtree(TARGET / "coffeeping" / name, ignore_errors=True)
            if (out / "coffeeping" / name).exists():
                shutil.copytree(out / "coffeeping" / name, TARGET / "coffeeping" / name)
    print(f"generated {len(fresh)} files into {TARGET / 'coffeeping'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
