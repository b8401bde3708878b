"""One tagging or cleaning run at a time for a page (standalone or the WebUI's Tagger tab): runs in a thread,
streams its progress, stops on request, unloads the tagger on request."""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

from ..jobs import FanOut, Job, JobReporter
from ..training.report import Reporter
from .clean import CleanConfig, CleanReport, clean_folder
from .config import TagConfig
from .model import POOL, TaggerPool
from .run import TagReport, tag_folder


class TaggingRunner:
    def __init__(self, pool: TaggerPool = POOL, extra_reporter: Callable[[], Reporter] | None = None,
                 captioner: Callable | None = None):
        """``captioner``: the host's BLIP (the WebUI's), for ``blip``."""
        self.pool, self.captioner = pool, captioner
        self.extra_reporter = extra_reporter
        self._reporter: JobReporter | None = None
        self._lock = threading.Lock()

    def run(self, cfg: TagConfig | CleanConfig) -> Iterator[tuple[Job, TagReport | CleanReport | None]]:
        """Yields (job, None) about twice a second while tagging (or cleaning), then (job, report)."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("a tagging or cleaning run is already going; stop it or wait")
        try:
            kind = "clean" if isinstance(cfg, CleanConfig) else "tag"
            job = Job(id=kind, kind=kind, status="running", started=time.time())
            self._reporter = reporter = JobReporter(job)
            both = FanOut(reporter, self.extra_reporter()) if self.extra_reporter else reporter
            box: dict = {}

            def work():
                try:
                    if kind == "clean":
                        box["report"] = clean_folder(cfg, both)
                    else:
                        box["report"] = tag_folder(cfg, both, self.pool, self.captioner)
                except Exception as e:  # shown on the page
                    box["error"] = e

            worker = threading.Thread(target=work, daemon=True, name="scal-sdt-tagging")
            worker.start()
            while worker.is_alive():
                worker.join(0.5)
                yield job, None
            if "error" in box:
                job.status, job.error = "failed", str(box["error"])
                raise box["error"]
            report = box["report"]
            job.status = "interrupted" if report.interrupted else "finished"
            yield job, report
        finally:
            self._lock.release()

    def stop(self) -> None:
        if self._reporter is not None:
            self._reporter.stop_requested.set()

    def unload(self) -> str:
        n = self.pool.unload()
        return f"unloaded {n} tagger(s)" if n else "no tagger was loaded"
