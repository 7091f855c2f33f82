"""Asset paths a USD layer or an MDL module names, as written (run as its own process).

usd-core's ``UsdUtils.ExtractExternalReferences`` reports a layer's sublayers,
references, payloads and asset-valued attributes (textures, MDL modules). It runs in a
child process, never in the daemon (memory; a hostile layer that crashes or hangs the
parser costs the child, not the mount): ``python -m isaacfs.jobs.usd_deps FILE...``
prints one JSON object; ``--serve`` is the long-lived worker (``jobs.parser``) that
answers one path per line.

MDL modules are not USD: their texture paths are read from ``texture_2d("...")``
literals, and relative module imports (``import .::name::*``) from their text.
"""

from __future__ import annotations

import json
import re
import sys

USD_SUFFIXES = (".usd", ".usda", ".usdc", ".usdz")
MDL_SUFFIX = ".mdl"

_MDL_TEXTURE = re.compile(r'texture_(?:2d|3d|cube|ptex)\s*\(\s*"([^"]+)"')
_MDL_RELATIVE_IMPORT = re.compile(r"^\s*(?:export\s+)?(?:using\s+|import\s+)\.((?:::\w+)+)", re.MULTILINE)


def wants_parsing(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith(USD_SUFFIXES) or lowered.endswith(MDL_SUFFIX)


def mdl_dependencies(text: str) -> list[str]:
    found = [path for path in _MDL_TEXTURE.findall(text)]
    for module in _MDL_RELATIVE_IMPORT.findall(text):
        names = [part for part in module.split("::") if part]
        if names and names[-1] == "*":
            names = names[:-1]
        if names:
            found.append("./" + "/".join(names) + ".mdl")
    return found


def usd_dependencies(path: str) -> list[str]:
    from pxr import UsdUtils

    sublayers, references, payloads = UsdUtils.ExtractExternalReferences(path)
    return [*sublayers, *references, *payloads]


def dependencies(path: str) -> list[str]:
    if path.lower().endswith(MDL_SUFFIX):
        with open(path, encoding="utf-8", errors="replace") as stream:
            return mdl_dependencies(stream.read())
    return usd_dependencies(path)


# The worker's address space (usd-core loaded, one layer parsed; malloc arenas capped at two by
# the parser, so that many cores do not reserve more): a 100 MB layer took it to
# 6.9 GB without a cap.
WORKER_MEMORY_MB = 4096


def answer(path: str) -> dict[str, object]:
    try:
        return {"deps": dependencies(path)}
    except MemoryError:
        return {"error": f"reading it needs more than the worker's {WORKER_MEMORY_MB} MB"}
    except Exception as exc:  # one unreadable layer must not hide the others' answers
        return {"error": str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)}


def serve(memory_mb: int = WORKER_MEMORY_MB) -> int:
    """The long-lived worker: one JSON-encoded path per line on stdin (a name may hold a
    newline), one JSON answer per line on stdout, naming the path it answers. Its address
    space is capped at ``memory_mb``: a layer that would take more fails with MemoryError
    (an answer) or ends the worker (restarted by the daemon), never the machine's memory."""
    import resource

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        from pxr import UsdUtils  # noqa: F401  (loaded now, while the first layer is still on its way)
    except ImportError:
        pass
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            path = json.loads(line)
        except ValueError:
            path = None
        if not isinstance(path, str):
            sys.stdout.write(json.dumps({"path": None, "error": "malformed request"}) + "\n")
        else:
            sys.stdout.write(json.dumps({"path": path, **answer(path)}) + "\n")
        sys.stdout.flush()
    return 0


def main(paths: list[str]) -> int:
    if paths == ["--serve"]:
        return serve()
    json.dump({path: answer(path) for path in paths}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
