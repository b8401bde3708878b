"""The Queue tab: the queue folder's jobs, run / stop / pause / resume, a job moved, cancelled or removed, a config
file added. The same blocks in the WebUI and on the standalone page; the training tabs' "Add to queue" fills it."""
from __future__ import annotations

import html

import gradio as gr

from ..run_queue.background import BackgroundRunner
from ..run_queue.view import job_table
from .form import error_html

ELEM_PREFIX = "scal_sdt_queue"
REFRESH_S = 3.0  # the table and status follow the runner this often


def status_html(runner: BackgroundRunner) -> str:
    """Whether this process runs the queue, whether it is paused, and the runner's last lines."""
    state = runner.status()
    head = ("running" if state["running"] else "not running") + (", paused" if state["paused"] else "")
    log = "<br>".join(html.escape(line) for line in state["log"][-6:])
    return f"<p>Queue {html.escape(state['folder'])}: <b>{head}</b></p>" + (f"<p>{log}</p>" if log else "")


def queue_tab(runner: BackgroundRunner) -> dict:
    """Build the tab in the current Blocks context; returns its components by name. The table and the runner's
    status refresh every few seconds by themselves: a gr.Timer where Gradio has one (4.40 and later), else (the
    WebUI's Gradio 3) javascript/scal_sdt.js presses Refresh while the tab is shown."""
    queue = runner.queue
    p = ELEM_PREFIX
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.HTML(job_table(queue), elem_id=f"{p}_table")
            status = gr.HTML(status_html(runner), elem_id=f"{p}_status")
            note = gr.HTML(elem_id=f"{p}_note")
        with gr.Column(scale=2):
            with gr.Row():
                run = gr.Button("Run queue", variant="primary", elem_id=f"{p}_run")
                stop = gr.Button("Stop after this job", elem_id=f"{p}_stop")
                refresh = gr.Button("Refresh", elem_id=f"{p}_refresh")
            with gr.Row():
                pause = gr.Button("Pause queue", elem_id=f"{p}_pause")
                resume = gr.Button("Resume queue", elem_id=f"{p}_resume")
            job = gr.Textbox(label="job", info="its id (or the start of it) from the table", elem_id=f"{p}_job")
            place = gr.Number(label="place", info="move: its new place among the jobs still to run (1 = next)",
                              value=1, precision=0, elem_id=f"{p}_place")
            with gr.Row():
                move = gr.Button("Move", elem_id=f"{p}_move")
                pause_job = gr.Button("Pause job", elem_id=f"{p}_pause_job")
                resume_job = gr.Button("Resume job", elem_id=f"{p}_resume_job")
            with gr.Row():
                cancel = gr.Button("Cancel", elem_id=f"{p}_cancel")
                remove = gr.Button("Remove", elem_id=f"{p}_remove")
            upload = gr.File(label="add a config file (.toml or .json with its command, as --save-config writes)",
                             file_types=[".toml", ".json"], elem_id=f"{p}_upload")

    def act(fn):
        def handler(*args):
            try:
                note_html = f"<p>{html.escape(fn(*args) or '')}</p>"
            except (ValueError, OSError, RuntimeError) as e:
                note_html = error_html(e)
            return job_table(queue), status_html(runner), note_html
        return handler

    def on_run():
        return "started" if runner.start() else "the queue is already running"

    def on_stop():
        runner.stop_after_current()
        return "the queue stops after the job it is on"

    def on_move(job_id, to):
        moved = queue.move(str(job_id).strip(), int(to or 1))
        return f"moved {moved.id} to place {int(to or 1)}"

    def on_pause_job(job_id):
        paused = queue.pause_job(str(job_id).strip())
        return f"paused {paused.id}: " + ("it stops after its current step" if "running" in paused.message
                                          else "the queue passes it over until it is resumed")

    def on_cancel(job_id):
        return f"cancelled {queue.cancel(str(job_id).strip()).id}"

    def on_remove(job_id):
        queue.remove(str(job_id).strip())
        return f"removed {job_id}"

    def on_upload(file):
        if file is None:
            return ""
        added = queue.add_file(getattr(file, "name", file))  # Gradio 3 gives a temporary file, later ones a path
        return f"queued {added.id}: {added.command} {added.name}"

    outputs = [table, status, note]
    run.click(act(on_run), inputs=[], outputs=outputs)
    stop.click(act(on_stop), inputs=[], outputs=outputs)
    refresh.click(lambda: (job_table(queue), status_html(runner)), inputs=[], outputs=[table, status])  # keeps the note
    pause.click(act(lambda: queue.pause() or "paused: the job running finishes, no next one starts"), inputs=[],
                outputs=outputs)
    resume.click(act(lambda: queue.resume() or "resumed"), inputs=[], outputs=outputs)
    move.click(act(on_move), inputs=[job, place], outputs=outputs)
    pause_job.click(act(on_pause_job), inputs=[job], outputs=outputs)
    resume_job.click(act(lambda job_id: f"resumed {queue.resume_job(str(job_id).strip()).id}"), inputs=[job],
                     outputs=outputs)
    cancel.click(act(on_cancel), inputs=[job], outputs=outputs)
    remove.click(act(on_remove), inputs=[job], outputs=outputs)
    upload.upload(act(on_upload), inputs=[upload], outputs=outputs)
    if hasattr(gr, "Timer"):
        gr.Timer(REFRESH_S).tick(lambda: (job_table(queue), status_html(runner)), inputs=[], outputs=[table, status])
    return {"table": table, "status": status, "note": note, "run": run, "stop": stop, "pause": pause,
            "resume": resume, "job": job, "place": place, "move": move, "pause_job": pause_job,
            "resume_job": resume_job, "cancel": cancel, "remove": remove, "upload": upload}
