"""The training forms' "Check data" button: the form's data folder audited for its method (audit/), the report in
the tab's words. Nothing in the folder changes."""
from __future__ import annotations

import html
import tempfile
from pathlib import Path
from typing import Callable

from ..audit.config import AuditConfig
from ..audit.report import AuditReport
from ..audit.run import audit_folder

#: the form fields the check reads (those a form lacks are left out)
FIELDS = ("data", "instance_data", "resolution", "batch_size", "data_source")


def audit_config(method: str, values: dict, native_resolution: int = 512, out: str = "scal-sdt-audits") -> AuditConfig:
    """An :class:`AuditConfig` from a training form's values: its data folder (``instance_data`` before ``data``;
    ``demo`` is made in a temporary folder first), its resolution (0 = ``native_resolution``) and batch size."""
    folder = (values.get("instance_data") or values.get("data") or "").strip()
    if not folder:
        raise ValueError("data: choose the data set folder first")
    if folder == "demo":
        from ..toy_world.concepts import make_held_out_colour_set

        folder = str(Path(tempfile.mkdtemp(prefix="scal-sdt-demo-")) / "demo")
        make_held_out_colour_set(folder)
    return AuditConfig(dir=folder, method=method, resolution=int(values.get("resolution") or native_resolution),
                       batch_size=int(values.get("batch_size") or 1), data_source=values.get("data_source") or "",
                       out=out)


def report_html(report: AuditReport) -> str:
    """The report as the tab shows it: the summary line, the problems with their files, the rest as text."""
    e = html.escape
    lines = report.summary().split("\n")
    found = report.by_kind()
    css = "scal-sdt-error" if found else "scal-sdt-ok"
    out = [f"<p class='{css}'><b>Data check</b>: {e(lines[0])}</p>"]
    if found:
        out.append("<ul>" + "".join(f"<li>{e(f.kind)}: " + " = ".join(f"<code>{e(p)}</code>" for p in f.paths)
                                    + (f" ({e(f.detail)})" if f.detail else "") + "</li>"
                                    for findings in found.values() for f in findings) + "</ul>")
    rest = [line for line in lines[1:] if not line.startswith("  ")]
    out.append("".join(f"<p>{e(line)}</p>" for line in rest))
    return "".join(out)


def check_data(method: str, values: dict, native_resolution: Callable[[], int] = lambda: 512,
               audit: Callable[[AuditConfig], AuditReport] = audit_folder) -> tuple[str, str | None]:
    """(the report as HTML, its picture) for the tab."""
    report = audit(audit_config(method, values, native_resolution()))
    picture = next((p for p in report.files if p.endswith(".png")), None)
    return report_html(report), picture
