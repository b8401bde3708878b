"""Would the WebUI's ``modules/safe.py`` load this ``.pt``? Its rule, reproduced without running the pickle.

safe.py (AUTOMATIC1111/stable-diffusion-webui, the same since v1.0 and in v1.8-v1.10) replaces ``torch.load`` with a
check: a zip-format file may only hold ``DIR/version``, ``DIR/data.pkl`` and ``DIR/data/N`` records (exactly one
``data.pkl``). torch 2.1 and later write ``byteorder`` and ``.data/serialization_id`` too, so v1.8.0 refuses a plain
modern ``torch.save``; WebUIs after it allow those two records (``later_loads``). A legacy file is five pickles in a row. Every global a pickle names must be on its allow-list below,
every persistent id must be a ``storage`` (torch's own ``BINPERSID`` tuples are taken as such; a text ``PERSID`` is
refused). Here the pickles' opcodes are only read (``pickletools.genops``): nothing is resolved or called.
"""
from __future__ import annotations

import io
import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

ZIP_NAME = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
LATER_ZIP_NAME = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")
DATA_PKL = re.compile(r"^([^/]+)/data\.pkl$")

#: module -> the names safe.py's RestrictedUnpickler.find_class resolves
ALLOWED = {
    "collections": {"OrderedDict"},
    "torch._utils": {"_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_device_tensor_from_numpy"},
    "torch": {"FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage", "ByteStorage", "float32",
              "BFloat16Storage"},
    "torch.nn.modules.container": {"ParameterDict"},
    "numpy.core.multiarray": {"scalar", "_reconstruct"},
    "numpy": {"dtype", "ndarray"},
    "_codecs": {"encode"},
    "pytorch_lightning.callbacks": {"model_checkpoint"},
    "pytorch_lightning.callbacks.model_checkpoint": {"ModelCheckpoint"},
    "__builtin__": {"set"},
}
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


@dataclass(frozen=True)
class SafeVerdict:
    loads: bool  # the WebUI's (v1.8.0) torch.load hands the content back (no "may be malicious" refusal)
    reason: str  # why not, or how it was checked
    later_loads: bool | None = None  # WebUIs after v1.8.0, which allow torch 2.1's extra zip records

    def text(self) -> str:
        return ("yes" if self.loads else "no") + f" ({self.reason})"


class _Refused(Exception):
    pass


def _globals_of(stream) -> list[tuple[str, str]]:
    """The (module, name) pairs one pickle asks for, and a check of its persistent ids, read from its opcodes."""
    found: list[tuple[str, str]] = []
    recent: list[str] = []  # the strings last pushed (STACK_GLOBAL takes two), memoised ones included
    memo: dict[int, str] = {}
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name in _STRINGS:
            recent.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
        elif name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE") and recent:
            memo[arg if name != "MEMOIZE" else len(memo)] = recent[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
            recent.append(memo[arg])
        if name in ("GLOBAL", "INST"):
            module, _, attr = arg.partition(" ")
            found.append((module, attr))
        elif name == "STACK_GLOBAL":
            if len(recent) < 2:
                raise _Refused("a global whose name cannot be read")
            found.append((recent[-2], recent[-1]))
        elif name == "OBJ":
            raise _Refused("an object built with the OBJ opcode")
        elif name == "PERSID":
            raise _Refused(f"persistent id {arg!r} is not a storage")
    return found


def _check(found: list[tuple[str, str]]) -> None:
    for module, name in found:
        if name not in ALLOWED.get(module, ()):
            raise _Refused(f"global '{module}/{name}' is forbidden")


def webui_safe(path: str | Path) -> SafeVerdict:
    """The verdict of safe.py's ``check_pt`` for a pickle-based file (``.pt``, ``.ckpt``, ``.bin``, ``.pth``)."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                pkls = [n for n in names if DATA_PKL.match(n)]
                if len(pkls) != 1:
                    return SafeVerdict(False, f"{len(pkls)} data.pkl records", False)
                _check(_globals_of(io.BytesIO(z.read(pkls[0]))))
                bad = [n for n in names if not ZIP_NAME.match(n)]
                if bad:
                    later = all(LATER_ZIP_NAME.match(n) for n in bad)
                    return SafeVerdict(False, f"bad file inside: {bad[0]}" + (
                        " (torch 2.1+'s zip records: v1.8.0 refuses them, later WebUIs load the file)" if later
                        else ""), later)
            return SafeVerdict(True, "zip format, only allowed globals", True)
        with open(path, "rb") as f:
            for _ in range(5):  # legacy format: magic, protocol, system info, the object, storage keys
                _check(_globals_of(f))
        return SafeVerdict(True, "legacy format, only allowed globals", True)
    except _Refused as e:
        return SafeVerdict(False, str(e), False)
    except Exception as e:  # noqa: BLE001 - safe.py reports any failure (a corrupt pickle too) and loads nothing
        return SafeVerdict(False, f"unreadable pickle: {type(e).__name__}: {e}"[:200], False)
