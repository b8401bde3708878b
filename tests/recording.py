"""A reporter for tests: keeps the messages, can ask the loop to stop after a given step."""
from scal_sdt.training.checkpoints import CheckpointStore
from scal_sdt.training.report import Reporter


def latest_state(run_dir):
    """The state of the newest complete checkpoint of a run."""
    return CheckpointStore(run_dir).load_latest()[1]


class RecordingReporter(Reporter):
    def __init__(self, stop_at=None):
        self.messages, self.stop_at, self.last = [], stop_at, 0

    def message(self, text):
        self.messages.append(text)

    def step(self, info):
        self.last = info["step"]

    def should_stop(self):
        return self.stop_at is not None and self.last >= self.stop_at
