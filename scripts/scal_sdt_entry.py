"""WebUI entry point. Thin on purpose: it puts the extension's package on sys.path; the features live in
``extensions_builtin/scal_sdt`` (importable as ``scal_sdt``). The WebUI keeps the extension root on sys.path only
while this file is imported, so the package is imported here, once."""
import os
import sys

_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_packages = os.path.join(_root, "extensions_builtin")
if _packages not in sys.path:
    sys.path.insert(0, _packages)

import scal_sdt  # noqa: E402,F401  (cached in sys.modules for the WebUI's later callbacks)
